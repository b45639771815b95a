"""Post-processing of network outputs into label maps (PANet reference rules, made configurable).

Region models (PANet convention) output logits for (bg, ET, TC, WT) with one sigmoid per
channel; class models output softmax logits over classes. The steps, in order:

1. **binarise**: sigmoid ≥ ``threshold`` per region channel (background channel dropped), or
   argmax over classes;
2. **nesting** (regions): ET ⊂ TC ⊂ WT enforced upwards (TC |= ET, WT |= TC). The reference
   binarised each channel independently and resolved conflicts only when writing labels, in
   assignment order, so a voxel with ET=1, TC=0, WT=1 became oedema (label 2) while ET=1,
   TC=WT=0 stayed ET; here both are ET, consistently with :func:`attnseg.data.labels.regions_to_classes`;
3. **small components**: connected components under ``min_component_voxels`` are removed from
   every region (or every foreground class), with the chosen connectivity (1 = faces, the
   reference's scipy default; 2 = faces+edges; 3 = 26-neighbourhood in 3-D);
4. **ET suppression** (``et_threshold`` > 0): if the ET volume is below the threshold
   (globally, or per ET component with ``et_per_component``), that ET is relabelled as
   NCR/NET, i.e. kept in TC and WT and removed from ET (reference: 300 voxels for its Adam
   config, 500 for SGD; ``global_replace=True`` by default);
5. **largest component** (organ tasks): keep only the largest component of each listed class
   (or of every foreground class with ``largest_component=True``).

All operations are vectorised per mask (scipy labelling + ``bincount``), no per-voxel loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from attnseg.data.labels import regions_to_classes

__all__ = [
    "PostprocessConfig",
    "enforce_nesting",
    "keep_largest_component",
    "postprocess",
    "remove_small_components",
    "suppress_small_et",
    "threshold_regions",
]


@dataclass
class PostprocessConfig:
    """Post-processing settings (see the module docstring for the order of the steps).

    Attributes:
        kind: ``"brats-regions"`` (sigmoid regions bg/ET/TC/WT) or ``"classes"`` (softmax).
        threshold: probability threshold for region channels.
        min_component_voxels: remove components smaller than this (0 = off; reference 10).
        connectivity: 1 (faces, reference), 2 or 3 (full neighbourhood).
        et_threshold: ET volume (voxels) under which ET becomes NCR/NET (0 = off; reference 300/500).
        et_per_component: apply the ET rule per ET component instead of to the total volume.
        et_class: class index of ET for ``kind="classes"`` with BraTS classes (NCR/NET = 1).
        largest_component: ``True`` = every foreground class, or a list of class indices, or ``False``.
        enforce_nesting: enforce ET ⊂ TC ⊂ WT for region outputs.
    """

    kind: str = "brats-regions"
    threshold: float = 0.5
    min_component_voxels: int = 0
    connectivity: int = 1
    et_threshold: int = 0
    et_per_component: bool = False
    et_class: int | None = None
    largest_component: bool | list[int] = False
    enforce_nesting: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def reference(cls, et_threshold: int = 300) -> PostprocessConfig:
        """The PANet reference settings: components < 10 voxels removed (face connectivity),
        global ET suppression below ``et_threshold`` voxels (300 Adam config, 500 SGD config)."""
        return cls(min_component_voxels=10, connectivity=1, et_threshold=et_threshold)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in 1..{ndim} for {ndim}-D masks, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def threshold_regions(probs: np.ndarray, threshold: float = 0.5, has_background: bool = True) -> np.ndarray:
    """(4, *S) probabilities (bg, ET, TC, WT) or (3, *S) (ET, TC, WT) → (3, *S) bool regions."""
    p = np.asarray(probs)
    if has_background:
        if p.shape[0] != 4:
            raise ValueError(f"expected 4 channels (bg, ET, TC, WT), got shape {p.shape}")
        p = p[1:]
    elif p.shape[0] != 3:
        raise ValueError(f"expected 3 channels (ET, TC, WT), got shape {p.shape}")
    return p >= threshold


def enforce_nesting(regions: np.ndarray) -> np.ndarray:
    """(3, *S) bool (ET, TC, WT) with TC |= ET and WT |= TC (a new array)."""
    r = np.array(regions, dtype=bool, copy=True)
    r[1] |= r[0]
    r[2] |= r[1]
    return r


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int = 1) -> np.ndarray:
    """Boolean ``mask`` without its connected components of fewer than ``min_voxels`` voxels."""
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    lab, n = ndimage.label(mask, _structure(mask.ndim, connectivity))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def keep_largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Boolean ``mask`` reduced to its largest connected component (ties: lowest label)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    lab, n = ndimage.label(mask, _structure(mask.ndim, connectivity))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def suppress_small_et(regions: np.ndarray, threshold: int, per_component: bool = False,
                      connectivity: int = 1) -> np.ndarray:
    """(3, *S) bool (ET, TC, WT): ET voxels in an ET volume under ``threshold`` become NCR/NET
    (switched on in TC and WT, off in ET). Global total by default, else per ET component."""
    r = np.array(regions, dtype=bool, copy=True)
    et = r[0]
    if threshold <= 0 or not et.any():
        return r
    if per_component:
        lab, n = ndimage.label(et, _structure(et.ndim, connectivity))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        small = (sizes < threshold)[lab] & et
    else:
        small = et if int(et.sum()) < threshold else np.zeros_like(et)
    r[1] |= small
    r[2] |= small
    r[0] &= ~small
    return r


def _postprocess_regions(probs: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    r = threshold_regions(probs, cfg.threshold, has_background=probs.shape[0] == 4)
    if cfg.enforce_nesting:
        r = enforce_nesting(r)
    if cfg.min_component_voxels > 1:
        r = np.stack([remove_small_components(m, cfg.min_component_voxels, cfg.connectivity) for m in r])
    if cfg.et_threshold > 0:
        r = suppress_small_et(r, cfg.et_threshold, cfg.et_per_component, cfg.connectivity)
    classes = regions_to_classes(r)
    if cfg.largest_component:
        classes = _largest(classes, cfg, 4)
    return classes


def _largest(classes: np.ndarray, cfg: PostprocessConfig, n_classes: int) -> np.ndarray:
    which: Sequence[int] = range(1, n_classes) if cfg.largest_component is True else cfg.largest_component
    out = classes.copy()
    for c in which:
        m = classes == c
        out[m & ~keep_largest_component(m, cfg.connectivity)] = 0
    return out


def postprocess(output: np.ndarray, config: PostprocessConfig | None = None,
                is_probability: bool = False) -> np.ndarray:
    """Network output (K, *S) → class map (*S) uint8/int16.

    ``output`` holds logits (default) or probabilities (``is_probability``). Region outputs
    return BraTS classes 0..3 (bg, NCR/NET, ED, ET); class outputs return argmax indices.
    """
    cfg = config or PostprocessConfig()
    out = np.asarray(output)
    if cfg.kind == "brats-regions":
        probs = out if is_probability else 1.0 / (1.0 + np.exp(-out.astype(np.float32)))
        return _postprocess_regions(probs, cfg)
    if cfg.kind != "classes":
        raise ValueError(f"kind must be 'brats-regions' or 'classes', got {cfg.kind!r}")
    n = out.shape[0]
    classes = np.argmax(out, axis=0).astype(np.uint8 if n <= 256 else np.int16)
    if cfg.min_component_voxels > 1:
        for c in range(1, n):  # per class, few classes; each call is vectorised
            m = classes == c
            classes[m & ~remove_small_components(m, cfg.min_component_voxels, cfg.connectivity)] = 0
    if cfg.et_threshold > 0 and cfg.et_class is not None:
        et = classes == cfg.et_class
        if cfg.et_per_component:
            lab, k = ndimage.label(et, _structure(et.ndim, cfg.connectivity))
            small = (np.bincount(lab.ravel(), minlength=k + 1) < cfg.et_threshold)[lab] & et
        else:
            small = et if int(et.sum()) < cfg.et_threshold else np.zeros_like(et)
        classes[small] = 1  # ET -> NCR/NET
    if cfg.largest_component:
        classes = _largest(classes, cfg, n)
    return classes
