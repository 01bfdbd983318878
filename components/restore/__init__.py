"""Restore ordinary photos with a pulled or local model: find, align, restore, paste back (photos.py),
in GFPGAN's output layout with a report (outputs.py), here or on a Ray cluster (run.py)."""

from components.restore.model import Restorer, RestoreError, load_restorer
from components.restore.outputs import ReportRow, find_photos
from components.restore.photos import PhotoRestorer, PhotoResult, RestoreOptions
from components.restore.run import RestoreSummary, restore_here, restore_on_cluster

__all__ = ["PhotoRestorer", "PhotoResult", "ReportRow", "RestoreError", "RestoreOptions", "RestoreSummary",
           "Restorer", "find_photos", "load_restorer", "restore_here", "restore_on_cluster"]
