"""Trial design from observational cohorts: subsets, effects, discovery, design and the report."""
