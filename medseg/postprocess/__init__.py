"""Postprocessing: connected components, hole filling, and resampling predictions back onto the input grid."""

from medseg.postprocess.components import bounding_box, fill_holes, largest_component
from medseg.postprocess.resample_back import input_box, labels_on_input_grid, sample_crop

__all__ = ["bounding_box", "fill_holes", "input_box", "labels_on_input_grid", "largest_component", "sample_crop"]
