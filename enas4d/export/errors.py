"""The one error of the export package."""

from __future__ import annotations


class ExportError(ValueError):
    """Bad export input (result file, output folder, thresholds) or a failed consistency check."""

