"""Preprocessing: the model grid (RAS orientation + model spacing), resampling onto it, and HU windowing."""

from medseg.preprocess.intensity import hu_window, window
from medseg.preprocess.spatial import ModelGrid, model_grid, ras_orientation, resample_to_grid

__all__ = ["ModelGrid", "hu_window", "model_grid", "ras_orientation", "resample_to_grid", "window"]
