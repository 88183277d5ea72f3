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
from scipy.special import ndtri

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
    return float(_ap_columns(t[:, None], np.asarray(y_score, dtype=np.float64).ravel()[:, None])[0])


def _ap_columns(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision of every column of (N, C) labels and scores (NaN without positives).

    Every positive gets the precision at the end of its group of tied scores."""
    n = t.shape[0]
    order = np.argsort(-s, axis=0, kind="mergesort")
    ss, tt = np.take_along_axis(s, order, 0), np.take_along_axis(t, order, 0)
    tp = np.cumsum(tt, axis=0)
    is_end = np.ones_like(tt)
    is_end[:-1] = ss[:-1] != ss[1:]
    idx = np.where(is_end, np.arange(n)[:, None], n)
    end = np.minimum.accumulate(idx[::-1], axis=0)[::-1]  # (N, C) the end of each position's group
    precision = np.take_along_axis(tp, end, 0) / (end + 1)
    n_pos = tt.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (tt * precision).sum(0) / n_pos, np.nan)


def roc_auc(y_true, y_score) -> float:
    """ROC AUC of one species (Mann–Whitney, ties count ½); NaN without positives or negatives."""
    t = np.asarray(y_true).astype(bool).ravel()
    return float(_auc_columns(t[:, None], np.asarray(y_score, dtype=np.float64).ravel()[:, None])[0])


def _auc_columns(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of (N, C) labels and scores (NaN without positives or negatives)."""
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=0)  # average ranks for ties
    n_pos = t.sum(0)
    n_neg = t.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * t).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def dprime(auc: float) -> float:
    """d′ = √2 · Φ⁻¹(AUC) (infinite for AUC = 1)."""
    return float(np.sqrt(2.0) * ndtri(auc))


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
    return float(np.mean(_ap_columns(t[:, cols], s[:, cols])))


def mean_auc(y_true, y_score, min_positives: int = MIN_POSITIVES) -> float:
    """Mean ROC AUC over :func:`eligible` species."""
    t, s = _check(y_true, y_score)
    cols = np.flatnonzero(eligible(t, min_positives))
    if len(cols) == 0:
        return float("nan")
    return float(np.mean(_auc_columns(t[:, cols], s[:, cols])))


def lwlrap(y_true, y_score) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019); windows without labels are skipped."""
    t, s = _check(y_true, y_score)
    num, den = _lwlrap_rows(t, s)
    return float(num.sum() / den.sum()) if den.sum() else float("nan")


def _lwlrap_rows(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: (Σ over its true species of the precision at that species' rank, its number
    of true species). Ties are pessimistic: a species ranks below every one scored as high."""
    from scipy.stats import rankdata

    ahead = rankdata(-s, method="max", axis=1)  # species scored ≥ s_ij
    hits = rankdata(-np.where(t, s, -np.inf), method="max", axis=1)  # true species scored ≥ s_ij
    return np.where(t, hits / ahead, 0.0).sum(1), t.sum(1)


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


METRICS = ("cmap", "lwlrap", "dprime", "top1")


def bootstrap(y_true, scores: dict[str, np.ndarray], groups, reps: int = 1000, seed: int = 0,
              min_positives: int = MIN_POSITIVES) -> dict[str, np.ndarray]:
    """Paired bootstrap over recordings: ``groups`` (N,) names each window's recording; every
    replicate draws recordings with replacement (the same draw for every score set) and scores
    their windows. Returns {name: (reps, 4)} with cmAP, lwlrap, d′ and top-1 per replicate.

    A replicate is the original windows weighted by how often their recording was drawn, which
    gives exactly the metrics of the resampled set; each score set is sorted once
    (:class:`Weighted`), so a replicate costs a few cumulative sums."""
    t = np.asarray(y_true).astype(bool)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    ranked = {name: Weighted(t, s, min_positives) for name, s in scores.items()}
    out = {name: np.zeros((reps, len(METRICS))) for name in scores}
    for r in range(reps):
        w = np.bincount(rng.integers(0, g.max() + 1, g.max() + 1), minlength=g.max() + 1)[g].astype(np.float64)
        for name, ws in ranked.items():
            out[name][r] = ws.metrics(w)
    return out


class Weighted:
    """cmAP, lwlrap, d′ and top-1 of one (N, C) score matrix for any non-negative window weights
    (a window of weight k counts as k copies of it); sorted once, so each call is cheap."""

    def __init__(self, y_true, y_score, min_positives: int = MIN_POSITIVES):
        t, s = _check(y_true, y_score)
        n, c = t.shape
        self.min_positives = min_positives
        self.order = np.ascontiguousarray(np.argsort(-s, axis=0, kind="mergesort").T)  # (C, N): species-major
        ss = np.take_along_axis(s.T, self.order, 1)
        self.tt = np.take_along_axis(t.T, self.order, 1)
        new = np.ones(ss.shape, bool)  # first of a group of tied scores
        new[:, 1:] = ss[:, 1:] != ss[:, :-1]
        last = np.ones(ss.shape, bool)
        last[:, :-1] = new[:, 1:]
        idx = np.arange(n)[None, :]
        end = np.minimum.accumulate(np.where(last, idx, n)[:, ::-1], axis=1)[:, ::-1]
        start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
        base = (np.arange(c) * n)[:, None]
        self.end, self.start = (end + base).ravel(), (start + base).ravel()  # flat indices into (C, N)
        self.lw_num, self.lw_den = _lwlrap_rows(t, s)
        self.labelled = t.any(1)
        best_true = np.where(t, s, -np.inf).max(1)
        best_false = np.where(t, -np.inf, s).max(1)
        self.top1 = self.labelled & (best_true > best_false)

    def metrics(self, w: np.ndarray) -> np.ndarray:
        """(N,) window weights → [cmAP, lwlrap, d′, top-1]."""
        shape = self.order.shape
        ws = w[self.order]  # (C, N) in each species' score order
        pos = ws * self.tt
        tp, cnt = np.cumsum(pos, 1), np.cumsum(ws, 1)
        cn = (cnt - tp).ravel()
        n_pos, n_neg = tp[:, -1], cnt[:, -1] - tp[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = (tp.ravel()[self.end] / cnt.ravel()[self.end]).reshape(shape)
            ap = np.where(pos > 0, pos * precision, 0.0).sum(1) / n_pos
            neg_upto_end = cn[self.end].reshape(shape)
            neg_before = (cn[self.start] - (ws - pos).ravel()[self.start]).reshape(shape)
            below = n_neg[:, None] - neg_upto_end + 0.5 * (neg_upto_end - neg_before)  # ties count ½
            auc = (pos * below).sum(1) / (n_pos * n_neg)
            cm = n_pos >= self.min_positives - 1e-9
            cmap_ = ap[cm].mean() if cm.any() else np.nan
            el = cm & (n_neg > 0)
            auc_ = auc[el].mean() if el.any() else np.nan
            lw = (w * self.lw_num).sum() / (w * self.lw_den).sum()
            top1 = (w * self.top1).sum() / (w * self.labelled).sum()
        return np.array([cmap_, lw, dprime(auc_) if auc_ == auc_ else np.nan, top1])
