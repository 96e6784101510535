"""Loss functions, pure functions of tensors, plus the thin DSCMRLoss module that weights them."""

from dscmr.losses.dscmr import (
    DSCMRLoss,
    LossTerms,
    discrimination_loss,
    half_cosine,
    label_similarity,
    label_space_loss,
    modality_invariance_loss,
    pair_nll,
    quantization_loss,
)

__all__ = [
    "DSCMRLoss",
    "LossTerms",
    "discrimination_loss",
    "half_cosine",
    "label_similarity",
    "label_space_loss",
    "modality_invariance_loss",
    "pair_nll",
    "quantization_loss",
]
