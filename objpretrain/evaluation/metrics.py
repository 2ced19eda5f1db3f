"""Scores of the linear probes: average precision (scikit-learn's definition), top-1, and their chance levels."""
import numpy as np
from sklearn.metrics import average_precision_score

__all__ = ["average_precision", "batch_mean_average_precision", "chance_top1", "mean_average_precision",
           "top1_accuracy"]


def average_precision(scores, labels):
    """Average precision of one class: sum over score thresholds of (R_k - R_{k-1}) * P_k, tied scores forming one
    threshold, no interpolation (``sklearn.metrics.average_precision_score``).

    Args:
        scores: (N,) real scores; labels: (N,) in {0, 1}.

    Returns:
        AP in [0, 1], or NaN when there is no positive (scikit-learn would warn and return 0).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal-length vectors")
    if labels.sum() == 0:
        return float("nan")
    return float(average_precision_score(labels, scores))


def mean_average_precision(scores, labels):
    """(mAP over the classes that have a positive, per-class APs with NaN for the others); (N, C) inputs."""
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    valid = [ap for ap in aps if not np.isnan(ap)]
    if not valid:
        raise ValueError("no class has a positive example in the evaluation set")
    return float(np.mean(valid)), aps


def top1_accuracy(scores, labels):
    """Fraction of rows of (N, C) ``scores`` whose arg-max is the (N,) integer label."""
    return float((np.asarray(scores).argmax(axis=1) == np.asarray(labels)).mean())


def chance_top1(labels):
    """Top-1 of always predicting the majority class of the (N,) integer labels."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels))


def batch_mean_average_precision(scores, labels, batch_size=256):
    """The mAP the released OAC linear evaluation reports (``map`` and ``validate`` in shlokk/object-cropping-ssl's
    main_lincls.py): the test set in consecutive batches of ``batch_size``; in each batch, per class with a positive
    in it, the mean of the precision at each positive in the order of decreasing score; the batch's mAP the mean
    over those classes; the result the mean of the batches' mAPs weighted by their sizes. It is not the mAP over
    the whole set (:func:`mean_average_precision`): a class is scored only within batches, where it has fewer
    negatives to rank above its positives. A batch without any positive (NaN in the official code) is left out.

    Args:
        scores, labels: (N, C); labels in {0, 1}.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0.5
    total, weight = 0.0, 0
    for start in range(0, len(scores), batch_size):
        batch_scores, batch_labels = scores[start:start + batch_size], labels[start:start + batch_size]
        aps = []
        for c in range(scores.shape[1]):
            positive = batch_labels[np.argsort(-batch_scores[:, c], kind="stable"), c]
            if positive.any():
                precision = np.cumsum(positive) / np.arange(1, len(positive) + 1)
                aps.append(precision[positive].mean())
        if aps:
            total += np.mean(aps) * len(batch_scores)
            weight += len(batch_scores)
    if weight == 0:
        raise ValueError("no class has a positive example in the evaluation set")
    return float(total / weight)
