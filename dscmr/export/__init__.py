"""Exports of trained runs for other runtimes: ``export_onnx`` writes a run's query paths as ONNX graphs.

Example:
    >>> from dscmr.export import export_onnx
    >>> manifest = export_onnx("runs/shapes", "runs/shapes-onnx", int8=True)
    >>> from dscmr.encoders.exported import ExportedRun
    >>> ExportedRun("runs/shapes-onnx").encode_texts(["a red circle"])  # (1, D)
"""

from __future__ import annotations

from dscmr.export.onnx import export_onnx

__all__ = ["export_onnx"]
