"""Validation report of a cohort read through a source: counts, missingness, every rejected row."""

from __future__ import annotations

from response_model.dataset import ParsedCohort, missingness, normalise_frame


def validation_report(parsed: ParsedCohort, source: str, path: str, max_warnings: int = 50) -> str:
    """Return the human-readable validation report printed by ``response-model validate``."""
    lines = [
        f"source: {source}",
        f"file: {path}",
        f"rows read: {parsed.n_read}",
        f"rows valid: {len(parsed.records)}",
        f"rows rejected: {len(parsed.rejected)}",
        "",
        "missingness of valid rows (fraction missing per field):",
    ]
    if parsed.records:
        table = missingness(normalise_frame(parsed.frame()))
        width = max(len(name) for name in table.index)
        lines += [f"  {name:<{width}}  {value:6.1%}" for name, value in table.items()]
    else:
        lines.append("  (no valid rows)")
    if parsed.notices:
        lines += ["", f"notices ({len(parsed.notices)}):"]
        lines += [f"  {notice}" for notice in parsed.notices]
    if parsed.rejected:
        lines += ["", "rejected rows:"]
        lines += [f"  {row}" for row in parsed.rejected]
    if parsed.warnings:
        lines += ["", f"warnings ({len(parsed.warnings)}):"]
        lines += [f"  {warning}" for warning in parsed.warnings[:max_warnings]]
        if len(parsed.warnings) > max_warnings:
            lines.append(f"  … and {len(parsed.warnings) - max_warnings} more")
    return "\n".join(lines)
