"""Segmentation metrics: overlap and surface-distance metrics of binary masks, BraTS region
scores with the legacy empty-region rules, the BraTS 2023 lesion-wise scores as the official
script computes them, and folder
evaluation (``attnseg evaluate``). See docs/metrics.md for every definition."""

from attnseg.metrics.brats import (
    BRATS_MAX_HD95,
    CHALLENGES,
    LESION_PENALTY,
    REGIONS,
    binary_scores,
    brats_region_scores,
    lesion_wise_scores,
)
from attnseg.metrics.core import (
    ASSD_METHODS,
    HD95_METHODS,
    assd,
    confusion,
    deepmind_surface_distances,
    dice,
    hausdorff,
    hd95,
    jaccard,
    sensitivity,
    specificity,
    surface_distances,
    volume_difference,
)

__all__ = [
    "ASSD_METHODS",
    "BRATS_MAX_HD95",
    "CHALLENGES",
    "HD95_METHODS",
    "LESION_PENALTY",
    "REGIONS",
    "assd",
    "binary_scores",
    "brats_region_scores",
    "confusion",
    "deepmind_surface_distances",
    "dice",
    "hausdorff",
    "hd95",
    "jaccard",
    "lesion_wise_scores",
    "sensitivity",
    "specificity",
    "surface_distances",
    "volume_difference",
]
