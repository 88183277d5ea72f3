"""The paper's classification metrics (§3.3) on a window × species score matrix.

All functions take ``y_true`` (N, C) in {0, 1} (N windows, C species) and ``y_score`` (N, C)
(any monotone score: probabilities or logits).

- **cmAP**: mean over species of average precision, over species with at least
  ``min_positives`` (5) positive windows.
- **lwlrap** (label-weighted label-ranking average precision, DCASE 2019 task 2): for every
  (window, true species) pair, the precision of the window's ranking of species at that
  species' rank; averaged over all pairs, so every label counts once.
- **d′** = √2 · Φ⁻¹(AUC), Φ the standard normal CDF; reported from the mean ROC AUC over the
  same species as cmAP.
- **top-1 precision**: over windows with at least one true species, the fraction whose
  highest-scoring species is a true one.

Ties are treated pessimistically throughout (a tied wrong species ranks ahead), as
scikit-learn does for label ranking; average precision groups tied scores as scikit-learn's
``average_precision_score`` does, and ROC AUC counts ties as one half.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

MIN_POSITIVES = 5


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim == 1:
        t, s = t[:, None], s[:, None]
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"y_true {t.shape} and y_score {s.shape} must both be (N, C)")
    return t.astype(bool), s


def average_precision(y_true, y_score) -> float:
    """Average precision of one species: Σ (R_k − R_{k−1}) P_k over distinct score thresholds.

    (N,) → float; NaN when there is no positive.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of tied scores
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def roc_auc(y_true, y_score) -> float:
    """ROC AUC of one species (Mann–Whitney, ties count ½); NaN without positives or negatives."""
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def dprime(auc: float) -> float:
    """d′ = √2 · Φ⁻¹(AUC) (infinite for AUC = 1)."""
    return float(np.sqrt(2.0) * norm.ppf(auc))


def eligible(y_true, min_positives: int = MIN_POSITIVES) -> np.ndarray:
    """Species (columns) with at least ``min_positives`` positives and at least one negative."""
    t = np.asarray(y_true).astype(bool)
    pos = t.sum(0)
    return (pos >= min_positives) & (pos < t.shape[0])


def cmap(y_true, y_score, min_positives: int = MIN_POSITIVES) -> float:
    """Class-wise mean average precision over species with ≥ ``min_positives`` positives."""
    t, s = _check(y_true, y_score)
    cols = np.flatnonzero(t.sum(0) >= min_positives)
    if len(cols) == 0:
        return float("nan")
    return float(np.mean([average_precision(t[:, c], s[:, c]) for c in cols]))


def mean_auc(y_true, y_score, min_positives: int = MIN_POSITIVES) -> float:
    """Mean ROC AUC over :func:`eligible` species."""
    t, s = _check(y_true, y_score)
    cols = np.flatnonzero(eligible(t, min_positives))
    if len(cols) == 0:
        return float("nan")
    return float(np.mean([roc_auc(t[:, c], s[:, c]) for c in cols]))


def lwlrap(y_true, y_score) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019); windows without labels are skipped."""
    t, s = _check(y_true, y_score)
    total, count = 0.0, 0
    for row_t, row_s in zip(t, s):
        pos = np.flatnonzero(row_t)
        if len(pos) == 0:
            continue
        for j in pos:
            above = row_s >= row_s[j]  # species ranked at or ahead of j (ties pessimistic)
            total += (row_t & above).sum() / above.sum()
            count += 1
    return total / count if count else float("nan")


def top1_precision(y_true, y_score) -> float:
    """Fraction of windows (with at least one true species) whose top-scoring species is true
    (a wrong species tied with it at the top makes it wrong)."""
    t, s = _check(y_true, y_score)
    rows = t.any(1)
    if not rows.any():
        return float("nan")
    t, s = t[rows], s[rows]
    best_true = np.where(t, s, -np.inf).max(1)
    best_false = np.where(t, -np.inf, s).max(1)
    return float((best_true > best_false).mean())


@dataclass(frozen=True)
class Scores:
    """One row of Table 2."""

    cmap: float
    lwlrap: float
    dprime: float
    top1: float
    auc: float
    windows: int
    labelled_windows: int
    species: int
    cmap_species: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def score_all(y_true, y_score, min_positives: int = MIN_POSITIVES) -> Scores:
    """cmAP, lwlrap, d′ (from the mean AUC), top-1 precision and counts."""
    t, s = _check(y_true, y_score)
    auc = mean_auc(t, s, min_positives)
    return Scores(
        cmap=cmap(t, s, min_positives), lwlrap=lwlrap(t, s), dprime=dprime(auc) if auc == auc else float("nan"),
        top1=top1_precision(t, s), auc=auc, windows=int(t.shape[0]), labelled_windows=int(t.any(1).sum()),
        species=int(t.shape[1]), cmap_species=int((t.sum(0) >= min_positives).sum()),
    )
