"""Missing inputs: hiding fields at the feature level, missingness augmentation for training, and
what an answer says about what it rests on.

**Why augmentation, not multiple imputation.** With a field missing, the honest estimate is
E[outcome | the fields observed]. A learner trained on copies of the training rows with fields
hidden (and their true labels) fits that conditional expectation directly — the Bayes-optimal
prediction under a hiding pattern is exactly E[y | x_observed] — inside the one model, the one
feature path (hidden = the columns the feature function gives a record without the field,
:func:`response_model.features.field_columns`) and the one bundle. The returned estimate IS the
model's output, so its SHAP explanation is exact for it. Multiple imputation would need a second,
conditional model of every field given the others fitted inside each fold and shipped in the bundle,
M scorings per answer (or fixed random draws at serving), and its explanation would be an average of
explanations of imputed patients whose contributions sit on values nobody recorded; its average is
E[p | x_obs] only as far as the imputation model is right. Augmentation's assumption is stated
instead: training rows are hidden at random (the mixture of :data:`SCHEMES`), so the estimate for a
missing field averages over what the training population's values were (for patients like this one
on the fields observed), not over why it was not recorded.

Augmentation happens inside :meth:`ResponseClassifier.fit` only, so in cross-validation it touches
the training folds, never a test fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from response_model.config import load_yaml
from response_model.features import field_columns, hideable_fields

SCHEMES = ("independent", "blocks", "required_only")


@lru_cache(maxsize=1)
def missingness_config() -> dict[str, Any]:
    """``configs/missingness.yaml`` (blocks, hiding mixture, information and OOD thresholds)."""
    config = load_yaml("missingness.yaml")
    unknown = sorted({f for fields in config["blocks"].values() for f in fields} - set(hideable_fields()))
    if unknown:
        raise ValueError(f"configs/missingness.yaml blocks: {', '.join(unknown)} are not optional record fields "
                         f"that decide a feature; expected some of {', '.join(hideable_fields())}")
    return config


def mask_fields(X: pd.DataFrame, hidden: Mapping[str, np.ndarray] | Sequence[str]) -> pd.DataFrame:
    """A copy of feature matrix ``X`` with record fields hidden: ``hidden`` is a list of fields (hidden
    in every row) or {field: boolean row mask}. Each field's columns (those of ``X``) get the value the
    feature function gives them without the field (NaN, or 0 for ``genotyped``)."""
    out = X.copy()
    masks = {f: np.ones(len(X), dtype=bool) for f in hidden} if not isinstance(hidden, Mapping) else hidden
    position = {c: j for j, c in enumerate(out.columns)}
    values = out.to_numpy(dtype=np.float64, copy=True)
    for field, rows in masks.items():
        rows = np.asarray(rows, dtype=bool)
        if not rows.any():
            continue
        for column, value in field_columns()[field].items():
            if column in position:
                values[rows, position[column]] = value
    return pd.DataFrame(values, columns=out.columns, index=out.index)


def hiding_masks(n: int, rng: np.random.Generator, rate: float = 0.5, mix: Mapping[str, float] | None = None,
                 blocks: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """{optional field: rows hidden} for ``n`` rows, each row's scheme drawn from ``mix`` (see
    configs/missingness.yaml): independent (each field w.p. ``rate``), blocks (each block w.p. 1/2, at
    least one) or required_only (every optional field)."""
    config = missingness_config()
    mix = dict(mix if mix is not None else config["mix"])
    blocks = dict(blocks if blocks is not None else config["blocks"])
    unknown = sorted(set(mix) - set(SCHEMES))
    if unknown or not np.isclose(sum(mix.values()), 1.0) or min(mix.values()) < 0:
        raise ValueError(f"missing_mix: {mix!r}; expected non-negative shares of {', '.join(SCHEMES)} summing to 1")
    fields = hideable_fields()
    scheme = rng.choice(len(SCHEMES), size=n, p=[float(mix.get(s, 0.0)) for s in SCHEMES])
    hidden = {f: (scheme == 0) & (rng.random(n) < rate) for f in fields}
    block_rows = scheme == 1
    chosen = rng.random((n, len(blocks))) < 0.5
    none = ~chosen.any(axis=1)
    chosen[none, rng.integers(0, len(blocks), none.sum())] = True  # at least one block
    for k, members in enumerate(blocks.values()):
        for f in members:
            hidden[f] |= block_rows & chosen[:, k]
    for f in fields:
        hidden[f] |= scheme == 2
    return hidden


def augment(X: pd.DataFrame, y: np.ndarray, copies: int, weight: float, seed: int, rate: float = 0.5,
            mix: Mapping[str, float] | None = None, blocks: Mapping[str, Sequence[str]] | None = None,
            ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(rows, labels, sample weights): ``X`` itself (weight 1) followed by ``copies`` copies with
    fields hidden (:func:`hiding_masks`), each copy weighted ``weight / copies`` — so the hidden
    copies together weigh ``weight`` times the original rows, however many there are."""
    rng = np.random.default_rng(seed)
    parts, labels, weights = [X], [np.asarray(y)], [np.ones(len(X))]
    for _ in range(copies):
        parts.append(mask_fields(X, hiding_masks(len(X), rng, rate, mix, blocks)))
        labels.append(np.asarray(y))
        weights.append(np.full(len(X), weight / copies))
    frame = pd.concat(parts, ignore_index=True)
    return frame, np.concatenate(labels), np.concatenate(weights)
