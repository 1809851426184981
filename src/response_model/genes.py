"""HGNC gene-symbol vocabulary: validation, previous-symbol mapping and nearest-symbol suggestions.

Suggestions come from an index built once (:func:`_suggestion_pools`): the approved symbols grouped by
length, searched with RapidFuzz's normalised Indel similarity (the measure difflib's ratio approximates)
in C++, so one unknown symbol costs well under a millisecond whatever it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from importlib import resources

import numpy as np
from rapidfuzz import fuzz, process

#: suggestions are symbols whose length is within this of the query's (where typos land)
LENGTH_WINDOW = 2
#: least similarity (0–100, RapidFuzz ratio) of a suggestion; 60 is difflib's usual cutoff of 0.6
SUGGESTION_CUTOFF = 60.0


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


@lru_cache(maxsize=1)
def _suggestion_pools() -> dict[tuple[str, int], tuple[str, ...]]:
    """{(first letter or "", query length): upper-cased approved symbols within :data:`LENGTH_WINDOW` of
    that length (with that first letter; "" = any)}, built once."""
    pools: dict[tuple[str, int], list[str]] = {}
    for upper in sorted(_upper_index()):
        for n in range(max(1, len(upper) - LENGTH_WINDOW), len(upper) + LENGTH_WINDOW + 1):
            pools.setdefault((upper[0], n), []).append(upper)
            pools.setdefault(("", n), []).append(upper)
    return {key: tuple(symbols) for key, symbols in pools.items()}


_SUGGESTIONS_LEFT: ContextVar[int | None] = ContextVar("suggestions_left", default=None)


@contextmanager
def suggestions_at_most(n: int) -> Iterator[None]:
    """Within the block (this thread or task), only the first ``n`` unknown symbols get suggestions; the
    others are refused without, which keeps a request's cost bounded whatever it lists."""
    token = _SUGGESTIONS_LEFT.set(n)
    try:
        yield
    finally:
        _SUGGESTIONS_LEFT.reset(token)


def nearest_symbols(symbol: str, n: int = 3) -> list[str]:
    """Return up to ``n`` approved symbols closest in spelling to ``symbol``, most similar first.

    Symbols sharing its first letter are searched first (where typos land), all of similar length when
    none is close. Empty for a string no symbol is near in length (e.g. 200 characters): the cost is
    bounded by the index, never by the input (about a millisecond at most).
    """
    query = symbol.strip().upper()
    if not query:
        return []
    pools = _suggestion_pools()
    for pool in (pools.get((query[0], len(query)), ()), pools.get(("", len(query)), ())):
        # cdist, not extract: it scores in C++ with the GIL released, so other threads (the event loop) run
        scores = process.cdist([query], pool, scorer=fuzz.ratio, score_cutoff=SUGGESTION_CUTOFF,
                               dtype=np.float32, workers=1)[0]
        hits = np.flatnonzero(scores)  # below the cutoff scores 0
        if hits.size:
            index = _upper_index()
            return [index[pool[i]] for i in hits[np.argsort(-scores[hits], kind="stable")][:n]]
    return []


def _suggestions(symbol: str) -> list[str]:
    """The suggestions for an unknown ``symbol``, within the budget of :func:`suggestions_at_most`."""
    left = _SUGGESTIONS_LEFT.get()
    if left is not None:
        if left <= 0:
            return []
        _SUGGESTIONS_LEFT.set(left - 1)
    return nearest_symbols(symbol)


def normalise_symbol(symbol: str) -> str:
    """Return the approved HGNC symbol for ``symbol``.

    Accepts approved symbols in any ASCII letter case and previous symbols (``C11orf30`` → ``EMSY``);
    raises :class:`UnknownGeneError` with the nearest approved symbols otherwise.
    """
    cleaned = symbol.strip()
    if not cleaned.isascii():  # str.upper() folds 'ı' to 'I' and 'ſ' to 'S': never a symbol by accident
        raise UnknownGeneError(cleaned, [])
    if cleaned in approved_symbols():
        return cleaned
    by_case = _upper_index().get(cleaned.upper())
    if by_case is not None:
        return by_case
    if cleaned in previous_symbols():
        return previous_symbols()[cleaned]
    raise UnknownGeneError(cleaned, _suggestions(cleaned))
