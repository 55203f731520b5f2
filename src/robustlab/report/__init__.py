"""Reports: read a run directory's files, draw the plots, write one self-contained HTML page."""

from .build import build_report, read_run

__all__ = ["build_report", "read_run"]
