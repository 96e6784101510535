"""Cross-modal encoders and the DSCMR heads."""

from dscmr.models.dscmr import DSCMR, DSCMROutput, DSCMRSpec, InputNorm, make_subnet
from dscmr.models.ensemble import DSCMREnsemble, EnsembleSpec, spec_from_dict

RetrievalModel = DSCMR | DSCMREnsemble  # what a run folder's model is: one network or a seed ensemble

__all__ = [
    "DSCMR",
    "DSCMREnsemble",
    "DSCMROutput",
    "DSCMRSpec",
    "EnsembleSpec",
    "InputNorm",
    "RetrievalModel",
    "make_subnet",
    "spec_from_dict",
]
