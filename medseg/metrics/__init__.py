"""Segmentation metrics with one written definition each (docs/risk/metrics.md): overlap, surface, volume, CIs."""

from medseg.metrics.aggregate import Aggregate, aggregate, bootstrap_mean_ci, check_finite
from medseg.metrics.case import OrganMetrics, image_diagonal_mm, organ_metrics
from medseg.metrics.surface import SurfaceDistances, surface_distances

__all__ = [
    "Aggregate",
    "OrganMetrics",
    "SurfaceDistances",
    "aggregate",
    "bootstrap_mean_ci",
    "check_finite",
    "image_diagonal_mm",
    "organ_metrics",
    "surface_distances",
]
