"""numba kernels: intensity normalization, 3-class targets, connected components, class map -> nuclei,
CellProfiler-named measurements. Each function releases the GIL, so frames can be processed on threads."""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent)]  # the real folder, not a link to it (nucleiscreen/__init__.py)

from nucleiscreen.kernels.contrast import erase_faint, object_contrast
from nucleiscreen.kernels.instances import instances_from_classes
from nucleiscreen.kernels.measure import (
    measure,
    segment_and_measure,
    segment_and_summarize,
    summarize_frame,
    summarize_objects,
)
from nucleiscreen.kernels.normalize import Normalization, normalize
from nucleiscreen.kernels.quality import frame_quality
from nucleiscreen.kernels.runs import connected_components
from nucleiscreen.kernels.targets import classes_from_instances

__all__ = [
    "Normalization",
    "classes_from_instances",
    "connected_components",
    "erase_faint",
    "frame_quality",
    "instances_from_classes",
    "measure",
    "normalize",
    "object_contrast",
    "segment_and_measure",
    "segment_and_summarize",
    "summarize_frame",
    "summarize_objects",
]
