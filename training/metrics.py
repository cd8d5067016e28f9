"""Detection and segmentation metrics, numpy only.

AUROC: probability that a random positive outscores a random negative (ties count 1/2).
AUPRC: average precision, sum_k (R_k - R_{k-1}) P_k over distinct score thresholds.
Best-possible Dice: max over thresholds of 2 TP / (|pred| + |truth|).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sorted_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative true and false positives at each distinct threshold, scores descending."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in size")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), int(y.sum())


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, p = _sorted_counts(scores, labels)
    n = fp[-1] if fp.size else 0
    if p == 0 or n == 0:
        return float("nan")
    tpr = np.r_[0.0, tp / p]
    fpr = np.r_[0.0, fp / n]
    return float(np.trapezoid(tpr, fpr))


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, p = _sorted_counts(scores, labels)
    if p == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / p
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(best Dice, the threshold reaching it: predict positive where score >= threshold)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    tp, fp, p = _sorted_counts(s, labels)
    if p == 0:
        return float("nan"), float("nan")
    dice = 2 * tp / (tp + fp + p)
    k = int(np.argmax(dice))
    thresholds = np.sort(np.unique(s))[::-1]
    return float(dice[k]), float(thresholds[k])


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / denom) if denom else float("nan")


def pooled_metrics(
    scores: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | Sequence[np.ndarray], kind: str = "voxel"
) -> dict[str, float]:
    """Metrics over several cases' items together: each of ``scores`` and ``labels`` one array, or one array
    per case (concatenated in order). ``kind`` "voxel": voxel_auroc, voxel_auprc and best_dice over all the
    items (voxels); "slice": slice_auroc and slice_auprc over the items with a finite score (a slice
    without one is NaN)."""
    s = scores if isinstance(scores, np.ndarray) else np.concatenate(list(scores) or [np.zeros(0)])
    y = labels if isinstance(labels, np.ndarray) else np.concatenate(list(labels) or [np.zeros(0, bool)])
    if kind == "voxel":
        return {"voxel_auroc": auroc(s, y), "voxel_auprc": auprc(s, y), "best_dice": best_dice(s, y)[0]}
    if kind == "slice":
        ok = np.isfinite(s)
        return {"slice_auroc": auroc(s[ok], y[ok]), "slice_auprc": auprc(s[ok], y[ok])}
    raise ValueError(f"unknown kind {kind!r}; valid: voxel, slice")


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at each distinct threshold, starting at (0, 0)."""
    tp, fp, p = _sorted_counts(scores, labels)
    n = fp[-1] if fp.size else 0
    if p == 0 or n == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]) * float("nan")
    return np.r_[0.0, fp / n], np.r_[0.0, tp / p]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at each distinct threshold, scores descending."""
    tp, fp, p = _sorted_counts(scores, labels)
    if p == 0:
        return np.array([0.0]), np.array([float("nan")])
    return tp / p, tp / (tp + fp)


def thin_curve(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of a curve (first and last kept), for plotting."""
    if x.size <= n:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, x.size - 1, n).astype(np.int64), x.size - 1])
    return x[idx], y[idx]
