"""HGNC gene-symbol vocabulary: validation, previous-symbol mapping and nearest-symbol suggestions."""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def approved_symbols() -> frozenset[str]:
    """Return the set of HGNC approved gene symbols shipped with the package."""
    text = resources.files("response_model.data").joinpath("hgnc_symbols.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


@lru_cache(maxsize=1)
def previous_symbols() -> dict[str, str]:
    """Return a map from withdrawn/previous HGNC symbols to their current approved symbol."""
    text = resources.files("response_model.data").joinpath("hgnc_previous_symbols.tsv").read_text("utf-8")
    pairs = (line.split("\t") for line in text.splitlines()[2:] if line)
    return {old: new for old, new in pairs}


@lru_cache(maxsize=1)
def _upper_index() -> dict[str, str]:
    return {symbol.upper(): symbol for symbol in approved_symbols()}


class UnknownGeneError(ValueError):
    """Raised for a string that is not an HGNC gene symbol; carries the nearest valid symbols."""

    def __init__(self, symbol: str, suggestions: list[str]):
        self.symbol = symbol
        self.suggestions = suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"{symbol!r} is not an HGNC gene symbol{hint}")


def nearest_symbols(symbol: str, n: int = 3) -> list[str]:
    """Return up to ``n`` approved symbols closest in spelling to ``symbol``."""
    query = symbol.strip().upper()
    index = _upper_index()
    # difflib over 44k symbols is slow; compare only against symbols sharing the first letter
    # and of similar length, which is where typos land.
    pool = [s for s in index if s[:1] == query[:1] and abs(len(s) - len(query)) <= 2] or list(index)
    return [index[s] for s in difflib.get_close_matches(query, pool, n=n, cutoff=0.6)]


def normalise_symbol(symbol: str) -> str:
    """Return the approved HGNC symbol for ``symbol``.

    Accepts approved symbols in any letter case and previous symbols (``C11orf30`` → ``EMSY``);
    raises :class:`UnknownGeneError` with the nearest approved symbols otherwise.
    """
    cleaned = symbol.strip()
    if cleaned in approved_symbols():
        return cleaned
    by_case = _upper_index().get(cleaned.upper())
    if by_case is not None:
        return by_case
    if cleaned in previous_symbols():
        return previous_symbols()[cleaned]
    raise UnknownGeneError(cleaned, nearest_symbols(cleaned))
