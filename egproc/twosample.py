"""Classifier two-sample test: the single headline figure of a correction.

Per-variable distances (:mod:`egproc.metrics`) miss what a correction does to the joint
distribution. A classifier trained to tell sample ``a`` (e.g. data) from sample ``b`` (e.g.
corrected MC) using all variables at once sees every difference, marginal or correlated; its
ROC AUC on held-out events summarises them in one number:

* AUC = 0.5: the samples are indistinguishable (to this classifier, at this statistics);
* AUC → 1: perfectly separable. For two k-dimensional Gaussians with equal covariance Σ, the
  best possible AUC is Φ(Δ/√2) with Δ the Mahalanobis distance of the means — a known answer.

The AUC is computed on a held-out split, so under the null (a and b from one distribution) its
expectation is exactly 0.5 whatever the training did; training choices change the power of the
test, not its calibration. The procedure is repeated for each seed (subsample, split and
training all reseeded); the mean over seeds is the figure, the spread over seeds measures the
split and training noise. As for the distances, the AUC of MC against data should be read
against that of two independent data samples (the noise floor).

Each sample's weights are normalised to the same total for training (class balance, so the
classifier does not simply learn the sample sizes). The AUC is the weighted Mann–Whitney
probability

    AUC = Σ_{i∈b} Σ_{j∈a} w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (Σ_{i∈b} w_i · Σ_{j∈a} w_j),

identical to ``sklearn.metrics.roc_auc_score(..., sample_weight=w)`` for non-negative weights and
also defined for signed (NLO MC) weights, where sklearn's ROC curve is not monotone and it
raises. Gradient boosting needs non-negative sample weights, so negative weights are set to zero
for training only; the held-out AUC uses the signed weights and stays unbiased.

Reference: Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

__all__ = ["TwoSampleResult", "classifier_auc"]


@dataclass(frozen=True)
class TwoSampleResult:
    """AUC of a held-out classifier separating sample b from sample a.

    ``auc`` is the mean of ``aucs`` (one per seed), ``auc_std`` their standard deviation
    (ddof=1; NaN for a single seed); ``n_a``, ``n_b`` are the rows of each sample used per seed
    (after subsampling), train and test together.
    """

    auc: float
    auc_std: float
    aucs: tuple[float, ...]
    n_a: int
    n_b: int


def _weighted_auc(score: np.ndarray, is_b: np.ndarray, weight: np.ndarray) -> float:
    """Weighted Mann–Whitney AUC = P(s_b > s_a) + ½ P(s_b = s_a), ties grouped exactly."""
    unique, group = np.unique(score, return_inverse=True)
    weight_a = np.bincount(group, weights=np.where(is_b, 0.0, weight), minlength=unique.size)
    weight_b = np.bincount(group, weights=np.where(is_b, weight, 0.0), minlength=unique.size)
    a_below = np.cumsum(weight_a) - weight_a
    return float(weight_b @ (a_below + 0.5 * weight_a) / (weight_a.sum() * weight_b.sum()))


def _balanced(weights: np.ndarray, n_rows: float) -> np.ndarray:
    """Scale to total ``n_rows``: each class then carries the same total, at unit mean weight."""
    total = weights.sum()
    if not total > 0:
        raise ValueError("a training split has no positive weight: too few rows or mostly negative weights")
    return weights * (n_rows / total)


def _validated(sample: np.ndarray, weights: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    sample = np.asarray(sample, dtype=np.float64)
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [n, k] with at least 2 rows, got shape {sample.shape}")
    weights = np.ones(sample.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (sample.shape[0],):
        raise ValueError(f"weights_{name} have shape {weights.shape}, expected ({sample.shape[0]},)")
    if not weights.sum() > 0:
        raise ValueError(f"weights_{name} must have a positive total")
    return sample, weights


def classifier_auc(
    a: np.ndarray,
    b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.3,
    max_rows_per_sample: int = 200_000,
    max_iter: int = 200,
) -> TwoSampleResult:
    """Held-out ROC AUC of a gradient-boosted classifier separating ``b`` [m, k] from ``a`` [n, k].

    For each seed: draw at most ``max_rows_per_sample`` rows of each sample without replacement
    (a seeded, hence reproducible, subsample — it bounds the cost, not the statistics, of a
    comparison), hold out ``test_fraction`` of each sample, train
    ``HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=True, random_state=seed)``
    with class-balanced weights, and compute the weighted AUC on the held-out rows.
    """
    a, weights_a = _validated(a, weights_a, "a")
    b, weights_b = _validated(b, weights_b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} columns and b has {b.shape[1]}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if len(seeds) == 0:
        raise ValueError("need at least one seed")

    n_a, n_b = min(a.shape[0], max_rows_per_sample), min(b.shape[0], max_rows_per_sample)
    aucs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        # One permutation per sample both subsamples and splits it, stratified by construction.
        rows_a = rng.permutation(a.shape[0])[:n_a]
        rows_b = rng.permutation(b.shape[0])[:n_b]
        test_a, test_b = max(1, round(test_fraction * n_a)), max(1, round(test_fraction * n_b))
        train_a, train_b = rows_a[test_a:], rows_b[test_b:]
        test_a, test_b = rows_a[:test_a], rows_b[:test_b]

        train_weight_a = np.clip(weights_a[train_a], 0.0, None)
        train_weight_b = np.clip(weights_b[train_b], 0.0, None)
        n_train = 0.5 * (train_a.size + train_b.size)
        classifier = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=True, random_state=seed)
        classifier.fit(
            np.concatenate([a[train_a], b[train_b]]),
            np.concatenate([np.zeros(train_a.size), np.ones(train_b.size)]),
            sample_weight=np.concatenate([_balanced(train_weight_a, n_train), _balanced(train_weight_b, n_train)]),
        )
        score = classifier.predict_proba(np.concatenate([a[test_a], b[test_b]]))[:, 1]
        is_b = np.concatenate([np.zeros(test_a.size, dtype=bool), np.ones(test_b.size, dtype=bool)])
        aucs.append(_weighted_auc(score, is_b, np.concatenate([weights_a[test_a], weights_b[test_b]])))

    aucs_array = np.asarray(aucs)
    spread = float(np.std(aucs_array, ddof=1)) if aucs_array.size > 1 else float("nan")
    return TwoSampleResult(auc=float(aucs_array.mean()), auc_std=spread, aucs=tuple(aucs), n_a=n_a, n_b=n_b)
