"""Vision tasks: hyperspectral classification, denoising, image classification, dead-kernel diagnostics.

Each task is a library function taking a frozen config dataclass and writing a run folder (weights as
safetensors, the resolved config, metrics JSON); the CLI (``dscmr vision ...``) only parses options and
prints.
"""

from __future__ import annotations
