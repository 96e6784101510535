"""Retrieval metrics (mAP, P@k, PR curves) and run evaluation."""

from dscmr.eval.metrics import (
    PRCurve,
    average_precision_from_scores,
    average_precisions,
    cross_modal_map,
    mean_average_precision,
    pr_curve,
    precision_at_k,
)

__all__ = [
    "PRCurve",
    "average_precision_from_scores",
    "average_precisions",
    "cross_modal_map",
    "mean_average_precision",
    "pr_curve",
    "precision_at_k",
]
