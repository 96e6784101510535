"""Cross-modal encoders and the DSCMR heads."""

from dscmr.models.dscmr import DSCMR, DSCMROutput, DSCMRSpec, InputNorm, make_subnet

__all__ = ["DSCMR", "DSCMROutput", "DSCMRSpec", "InputNorm", "make_subnet"]
