"""Postprocessing: softmax and clean-up (connected components, hole filling), resampling predictions back onto the
input grid, and measuring masks (bounding box, centroid, organ statistics)."""

from medseg.postprocess.cleanup import input_grid_cleanup, model_space_cleanup, softmax
from medseg.postprocess.components import fill_holes, largest_component
from medseg.postprocess.measure import axis_profiles, bounding_box, centroid_index, organ_stats
from medseg.postprocess.resample_back import input_box, labels_on_input_grid, sample_crop

__all__ = [
    "axis_profiles",
    "bounding_box",
    "centroid_index",
    "fill_holes",
    "input_box",
    "input_grid_cleanup",
    "labels_on_input_grid",
    "largest_component",
    "model_space_cleanup",
    "organ_stats",
    "sample_crop",
    "softmax",
]
