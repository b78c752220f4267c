"""Export a searched subnet as a standalone early-exit model (TorchScript, ONNX, torch.export) and evaluate it.

- :mod:`enas4d.export.early_exit`: :class:`EarlyExitNet`, the batched early-exit module (TorchScript-able);
- :mod:`enas4d.export.onnx_export` / :mod:`enas4d.export.onnx_runner`: one ONNX graph per stage and the
  numpy + onnxruntime runner that does the same early exit;
- :mod:`enas4d.export.pt2_export` / :mod:`enas4d.export.pt2_runner`: the same split as ``torch.export``
  programs and the torch + numpy runner;
- :mod:`enas4d.export.exporter`: :func:`export_subnet` writes the export folder (``enas4d-export``: cli.py);
- :mod:`enas4d.export.evaluate`: ``enas4d-evaluate`` (accuracy, measured MACs, exits, throughput).
"""

from enas4d.export.early_exit import CONFIDENCES, EarlyExitNet, build_early_exit, fold_batchnorm
from enas4d.export.exporter import ExportError, export_subnet, is_export, read_result

__all__ = ["CONFIDENCES", "EarlyExitNet", "ExportError", "build_early_exit", "export_subnet", "fold_batchnorm",
           "is_export", "read_result"]
