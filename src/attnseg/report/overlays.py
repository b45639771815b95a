"""Segmentation overlays: three orthogonal slices through the lesion centre with ground-truth
and predicted contours drawn on the image (one row each, same slices).

Volumes are reoriented to the closest RAS axes before slicing (whatever the file's voxel
order), so every overlay reads the same way: axial and coronal slices show the patient's
right on the right of the picture (neurological convention), anterior / superior up, and
pixels have their physical aspect ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel.orientations as nio
import numpy as np

from attnseg.data.io import load_image
from attnseg.data.labels import REGION_NAMES, brats_to_regions
from attnseg.report.figures import DPI, _plt, colour

# preferred display channel for BraTS: FLAIR shows the whole tumour (oedema) best
DISPLAY_CHANNELS = ("flair", "t2f", "t1ce", "t1c", "t2", "t2w", "t1", "t1n")


@dataclass
class OverlayCase:
    """One case ready to draw: image and masks on the same RAS-ordered voxel grid."""

    case_id: str
    image: np.ndarray  # (X, Y, Z) float, RAS axis order
    reference: dict[str, np.ndarray]  # label name -> bool mask (X, Y, Z)
    prediction: dict[str, np.ndarray]
    spacing: tuple[float, float, float]  # mm along the RAS-ordered axes
    channel: str = ""
    scores: dict[str, float] = field(default_factory=dict)


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder/flip the first three axes of ``array`` to the closest RAS orientation of ``affine``."""
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    return np.ascontiguousarray(nio.apply_orientation(array, ornt))


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the axes produced by :func:`to_ras`."""
    a = np.asarray(affine, dtype=np.float64)
    ornt = nio.io_orientation(a)
    sizes = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    out = [1.0, 1.0, 1.0]
    for i, (j, _) in enumerate(ornt):
        out[int(j)] = float(sizes[i])
    return out[0], out[1], out[2]


def lesion_centre(masks: Sequence[np.ndarray], shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel inside the first non-empty mask that is closest to that mask's centre of mass
    (the centroid of a crescent-shaped lesion can lie outside it); the volume centre if all are empty."""
    for m in masks:
        if m is not None and m.any():
            pts = np.argwhere(m)
            c = pts.mean(axis=0)
            k = int(((pts - c) ** 2).sum(axis=1).argmin())
            return tuple(int(v) for v in pts[k])  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in shape)  # type: ignore[return-value]


def _window(image: np.ndarray) -> tuple[float, float]:
    vals = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _bbox(image: np.ndarray, masks: Sequence[np.ndarray], margin: int = 4) -> tuple[slice, slice, slice]:
    fg = image != 0
    for m in masks:
        fg = fg | m
    if not fg.any():
        return slice(None), slice(None), slice(None)
    lo = np.argwhere(fg).min(axis=0)
    hi = np.argwhere(fg).max(axis=0) + 1
    return tuple(slice(max(int(a) - margin, 0), min(int(b) + margin, s))  # type: ignore[return-value]
                 for a, b, s in zip(lo, hi, image.shape))


def plot_overlay(case: OverlayCase, path: str | Path, title: str | None = None) -> Path:
    """Draw ``case`` as two rows of three panels (axial, coronal, sagittal) through the lesion centre:
    ground-truth contours on top, predicted contours below, on the same slices.

    One colour per region/class (the same colours as the box plots). Nested regions (ET ⊂ TC ⊂
    WT) often share boundaries, so outer regions are drawn with wider lines underneath the inner
    ones: a shared boundary shows as an inner-colour line with an outer-colour rim. Writes a PNG
    to ``path`` and returns it.
    """
    plt = _plt()  # optional: the [report] extra (one line naming it when missing)
    from matplotlib.lines import Line2D  # optional, as above
    img = case.image
    labels = list(dict.fromkeys([*case.reference, *case.prediction]))
    ref_any = [case.reference[k] for k in labels if k in case.reference]
    pred_any = [case.prediction[k] for k in labels if k in case.prediction]
    # centre on the largest reference region (WT for BraTS), else on the prediction
    order = sorted(ref_any, key=lambda m: -int(m.sum())) + sorted(pred_any, key=lambda m: -int(m.sum()))
    cx, cy, cz = lesion_centre(order, img.shape)
    box = _bbox(img, [*ref_any, *pred_any])
    lo, hi = _window(img)
    sx, sy, sz = case.spacing
    # (name, 2-D selector, horizontal axis spacing, vertical spacing, edge letters l/r/bottom/top)
    views = [
        (f"axial (z={cz})", (box[0], box[1], cz), sx, sy, ("L", "R", "P", "A")),
        (f"coronal (y={cy})", (box[0], cy, box[2]), sx, sz, ("L", "R", "I", "S")),
        (f"sagittal (x={cx})", (cx, box[1], box[2]), sy, sz, ("P", "A", "I", "S")),
    ]
    widths = {label: 1.3 + 0.6 * (len(labels) - 1 - i) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 8.2))
    rows = (("ground truth", case.reference), ("prediction", case.prediction))
    for r, (row_name, masks) in enumerate(rows):
        for c, (name, sel, sh, sv, letters) in enumerate(views):
            ax = axes[r][c]
            ax.imshow(img[sel].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=sv / sh,
                      interpolation="nearest")
            for i, label in enumerate(labels):
                m = masks.get(label)
                if m is None:
                    continue
                sl = m[sel].T
                if sl.any():
                    ax.contour(sl.astype(np.float32), levels=[0.5], colors=[colour(label, i)],
                               linewidths=widths[label], origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.set_ylabel(row_name, fontsize=12, fontweight="bold")
            kw = {"color": "#ffd27f", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
            ax.text(0.01, 0.5, letters[0], ha="left", va="center", **kw)
            ax.text(0.99, 0.5, letters[1], ha="right", va="center", **kw)
            ax.text(0.5, 0.01, letters[2], ha="center", va="bottom", **kw)
            ax.text(0.5, 0.99, letters[3], ha="center", va="top", **kw)
    handles = [Line2D([], [], color=colour(label, i), lw=3, label=label) for i, label in enumerate(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), frameon=False, fontsize=10,
               bbox_to_anchor=(0.5, 0.0))
    if title is None:
        title = case.case_id
    if case.channel:
        title += f"   [image: {case.channel}]"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- loading cases
def _regions_of(label: np.ndarray, convention: str) -> dict[str, np.ndarray]:
    """BraTS label map → {WT, TC, ET} masks; tries the other release's values if these do not fit."""
    errors = []
    for conv in dict.fromkeys([convention, "brats2020", "brats2023"]):
        try:
            regions = brats_to_regions(label, conv)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        masks = dict(zip(REGION_NAMES, regions))
        return {k: masks[k] for k in ("WT", "TC", "ET")}
    raise ValueError(f"label values {sorted(np.unique(label).tolist())} fit no BraTS convention ({errors[-1]})")


def _classes_of(label: np.ndarray, values: Sequence[int]) -> dict[str, np.ndarray]:
    return {str(v): label == v for v in values}


def find_prediction(pred_dir: Path, case_id: str) -> Path | None:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        p = pred_dir / f"{case_id}{suffix}"
        if p.is_file():
            return p
    return None


def _display_channel(case: Any) -> int:
    names = [str(n).lower() for n in case.channels]
    for want in DISPLAY_CHANNELS:
        if want in names:
            return names.index(want)
    return 0


def load_overlay_case(case: Any, pred_path: Path, regions: bool | None = None,
                      label_names: dict[int, str] | None = None) -> OverlayCase:
    """Read the display channel, ground truth and prediction of a data-layer ``Case``.

    ``regions``: draw BraTS regions (WT/TC/ET) rather than classes; ``None`` decides from the
    case's label convention. Classes are named by ``label_names`` (default: the case's
    ``dataset.json`` names, else the values). Raises ``ValueError`` naming the file when shapes
    disagree.
    """
    ch = _display_channel(case)
    single = len(case.image_paths) == 1  # MSD / 4-D NIfTI: every channel in one file
    image, affine, _ = load_image(case.image_paths[0 if single else ch], np.float32)
    if image.ndim == 4:
        idx = (case.extra.get("channel_index") or list(range(image.shape[3]))) if single else [0]
        image = image[..., idx[min(ch, len(idx) - 1)] if single else 0]
    pred, _, _ = load_image(pred_path)
    pred = np.squeeze(np.asarray(pred))
    if pred.shape != image.shape:
        raise ValueError(f"{pred_path}: prediction shape {pred.shape} differs from the image's {image.shape} "
                         f"({case.image_paths[ch]})")
    ref = None
    if case.label_path is not None:
        ref, _, _ = load_image(case.label_path)
        ref = np.squeeze(np.asarray(ref))
    pred = np.rint(pred).astype(np.int16)
    conv = str(getattr(case, "label_convention", "plain"))
    if regions is None:
        regions = conv.startswith("brats")
    if regions:
        ref_m = _regions_of(ref, conv) if ref is not None else {}
        pred_m = _regions_of(pred, conv)
    else:
        values = sorted(set(np.unique(pred).tolist()) | (set(np.unique(ref).tolist()) if ref is not None else set()))
        values = [v for v in values if v != 0]
        names = {int(k): str(v) for k, v in (label_names or case.extra.get("label_names") or {}).items()}
        ref_m = {names.get(int(v), str(v)): m for v, m in zip(values, _classes_of(ref, values).values())} \
            if ref is not None else {}
        pred_m = {names.get(int(v), str(v)): m for v, m in zip(values, _classes_of(pred, values).values())}
    return OverlayCase(
        case_id=case.case_id,
        image=to_ras(image, affine),
        reference={k: to_ras(v, affine) for k, v in ref_m.items()},
        prediction={k: to_ras(v, affine) for k, v in pred_m.items()},
        spacing=ras_spacing(affine),
        channel=case.channels[ch] if ch < len(case.channels) else "",
    )


def score_line(scores: dict[str, float], metric: str = "Dice") -> str:
    parts = [f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float) and math.isfinite(v)]
    return f"{metric} " + " · ".join(parts) if parts else ""
