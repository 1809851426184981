"""Genomic interpretation: somatic alterations → pathway features, by the rules in ``configs/pathways.yaml``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from response_model.config import load_yaml
from response_model.schema import Alteration, AlterationKind


@dataclass(frozen=True)
class PathwayRule:
    """One rule: a gene, the alteration kinds that count and, optionally, where in the protein."""

    gene: str
    kinds: frozenset[AlterationKind]
    positions: tuple[tuple[int, int], ...] = ()
    protein_changes: frozenset[str] = frozenset()

    def matches(self, alteration: Alteration) -> bool:
        """Return True when ``alteration`` satisfies this rule."""
        if alteration.gene != self.gene or alteration.kind not in self.kinds:
            return False
        if not self.positions and not self.protein_changes:
            return True
        if alteration.protein_change in self.protein_changes:
            return True
        position = alteration.protein_position
        return position is not None and any(start <= position <= end for start, end in self.positions)


@dataclass(frozen=True)
class Pathway:
    """A pathway feature: its name, label, citation and the rules that switch it on."""

    name: str
    label: str
    source: str
    rules: tuple[PathwayRule, ...]

    def drivers(self, alterations: Iterable[Alteration]) -> list[Alteration]:
        """Return the alterations that switch this pathway on."""
        return [alt for alt in alterations if any(rule.matches(alt) for rule in self.rules)]


@lru_cache(maxsize=4)
def load_pathways(name: str = "pathways.yaml") -> tuple[Pathway, ...]:
    """Return the pathways defined in the YAML file ``name`` (default ``configs/pathways.yaml``)."""
    config = load_yaml(name)
    groups = {key: [AlterationKind(kind) for kind in kinds] for key, kinds in config.get("kind_groups", {}).items()}
    pathways = []
    for pathway_name, spec in config["pathways"].items():
        rules = []
        for rule in spec["rules"]:
            kinds: list[AlterationKind] = []
            for kind in rule["kinds"]:
                kinds.extend(groups[kind] if kind in groups else [AlterationKind(kind)])
            rules.append(PathwayRule(
                gene=rule["gene"],
                kinds=frozenset(kinds),
                positions=tuple((int(a), int(b)) for a, b in rule.get("positions", [])),
                protein_changes=frozenset(rule.get("protein_changes", [])),
            ))
        pathways.append(Pathway(pathway_name, spec["label"], spec["source"], tuple(rules)))
    return tuple(pathways)


@lru_cache(maxsize=4)
def _rules_by_gene(name: str = "pathways.yaml") -> dict[str, tuple[tuple[int, PathwayRule], ...]]:
    by_gene: dict[str, list[tuple[int, PathwayRule]]] = {}
    for k, pathway in enumerate(load_pathways(name)):
        for rule in pathway.rules:
            by_gene.setdefault(rule.gene, []).append((k, rule))
    return {gene: tuple(rules) for gene, rules in by_gene.items()}


def pathway_flags(alterations: Iterable[Alteration], name: str = "pathways.yaml") -> list[bool]:
    """Return, per pathway in configuration order, whether one of ``alterations`` switches it on
    (``bool(pathway.drivers(alterations))`` for each, in one pass trying only each gene's rules)."""
    flags = [False] * len(load_pathways(name))
    rules = _rules_by_gene(name)
    for alteration in alterations:
        for k, rule in rules.get(alteration.gene, ()):
            if not flags[k] and rule.matches(alteration):
                flags[k] = True
    return flags


def pathway_names() -> tuple[str, ...]:
    """Return the pathway feature names in configuration order."""
    return tuple(p.name for p in load_pathways())


def pathway_status(alterations: Sequence[Alteration] | None) -> dict[str, bool | None]:
    """Return, per pathway, True if an alteration switches it on, False if not, None if not sequenced."""
    if alterations is None:
        return {p.name: None for p in load_pathways()}
    return dict(zip((p.name for p in load_pathways()), pathway_flags(alterations)))


def representative_alteration(pathway: Pathway) -> Alteration:
    """An alteration that switches ``pathway`` on and no other pathway (for what-if estimates of a
    patient never sequenced): the first rule's gene and kind, at the first position it lists."""
    for rule in pathway.rules:
        for kind in sorted(rule.kinds):
            change = None
            if rule.protein_changes:
                change = sorted(rule.protein_changes)[0]
            elif rule.positions:
                change = f"p.A{rule.positions[0][0]}V"
            alteration = Alteration(gene=rule.gene, kind=kind, protein_change=change)
            flags = pathway_flags([alteration])
            if flags[[p.name for p in load_pathways()].index(pathway.name)] and sum(flags) == 1:
                return alteration
    raise ValueError(f"pathway {pathway.name!r}: no rule gives an alteration that switches on this pathway alone")
