"""PAM's slice weights as pictures (``attnseg cam --slice-weights``, ``attnseg report``).

For every slice-attention site of a model (a :class:`~attnseg.attention.slice.ProgressiveAttention`
or a :class:`~attnseg.attention.slice.SliceAttention` that is not part of one), a forward pass
over a region of a case records the slice weights ``s`` ``(B, C, D)`` and PAM's key-slice mask
(``s_j ≥ mean(s)`` per channel, the largest always kept). Per site ("level") the figure shows the
channel-mean slice weight (band: ± one channel sd) along the slice axis, in the input's slice
coordinates (a level with ``D`` slices of an input with ``N`` covers ``N / D`` input slices per
slice), next to the tumour extent along that axis (WT/TC/ET voxels per slice of the region) and,
underneath, the fraction of channels whose key-slice selection kept each slice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.attention._accel import slice_stats
from attnseg.attention.slice import ProgressiveAttention, SliceAttention, key_slice_mask
from attnseg.data.preprocess import preprocess_case, preprocess_config
from attnseg.data.readers import find_cases, load_case
from attnseg.models.checkpoint import build_model_from_checkpoint
from attnseg.report.cam import _read_case, _roi
from attnseg.runtime.optional import pyplot


@dataclass
class SliceProfile:
    """Slice weights of one site on one input. Arrays have one entry per slice of the site."""

    name: str                # module name in the model
    slice_axis: int          # spatial axis (0 = first spatial dim)
    weights: np.ndarray      # (D,) mean over channels (and batch) of the slice weights
    weights_sd: np.ndarray   # (D,) sd over channels
    kept: np.ndarray         # (D,) fraction of channels whose key-slice mask keeps the slice
    positions: np.ndarray    # (D,) slice centres in input-region voxel coordinates
    channels: int = 0


@dataclass
class CaseSliceWeights:
    """Profiles of every site for one case plus the tumour extent along the slice axis."""

    case_id: str
    profiles: list[SliceProfile]
    slice_axis: int
    offset: int                                   # first region slice, in the case's own slice numbers
    extent: dict[str, np.ndarray] = field(default_factory=dict)  # region -> voxels per region slice
    notes: list[str] = field(default_factory=list)


def slice_attention_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every PAM and of every slice attention that is not inside a PAM."""
    pams = [(n, m) for n, m in model.named_modules() if isinstance(m, ProgressiveAttention)]
    inside = {id(m.slice) for _, m in pams}
    plain = [(n, m) for n, m in model.named_modules() if isinstance(m, SliceAttention) and id(m) not in inside]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(pams + plain, key=lambda nm: order[nm[0]])


def slice_weight_profiles(model: nn.Module, x: torch.Tensor) -> list[SliceProfile]:
    """Run ``model`` on ``x`` ``(B, C, *S)`` and return the slice-weight profile of every site
    (in the order the sites appear in the model; empty when the model has none)."""
    sites = slice_attention_sites(model)
    found: dict[str, SliceProfile] = {}
    n_in = [int(s) for s in x.shape[2:]]

    def hook_for(name: str, m: nn.Module):
        def hook(_mod: nn.Module, inputs: tuple[Any, ...], _out: Any) -> None:
            z = inputs[0]
            axis = int(m.slice_axis)
            zavg, zmax = slice_stats(z.float(), axis, bool(m.needs_max))
            if isinstance(m, ProgressiveAttention):
                s, mask, _ = m.scales(zavg, zmax)
            else:
                s = m.weights(zavg, zmax)
                mask = key_slice_mask(s)
            s = s.float().reshape(-1, s.shape[-1])  # (B·C, D)
            d = s.shape[-1]
            f = n_in[axis] / d
            found[name] = SliceProfile(
                name=name, slice_axis=axis, weights=s.mean(0).numpy(), weights_sd=s.std(0, unbiased=False).numpy(),
                kept=mask.float().reshape(-1, d).mean(0).numpy(), positions=(np.arange(d) + 0.5) * f - 0.5,
                channels=int(z.shape[1]))
        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in sites]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [found[n] for n, _ in sites if n in found]


def _tumour_extent(label: np.ndarray | None, axis: int) -> dict[str, np.ndarray]:
    """Voxels per slice along ``axis`` of WT/TC/ET (BraTS 0/1/2/4 or 0/1/2/3 labels), or of the
    foreground for other label maps."""
    if label is None:
        return {}
    other = tuple(a for a in range(label.ndim) if a != axis)
    vals = set(np.unique(label).tolist())
    if vals <= {0, 1, 2, 3, 4} and 2 in vals:
        et_v = 4 if 4 in vals or 3 not in vals else 3
        regions = {"WT": label > 0, "TC": np.isin(label, (1, et_v)), "ET": label == et_v}
    else:
        regions = {"foreground": label > 0}
    return {k: v.sum(axis=other).astype(np.float64) for k, v in regions.items()}


def case_slice_weights(checkpoint: str | os.PathLike, case: str | os.PathLike,
                       roi_size: Sequence[int] | None = None) -> CaseSliceWeights:
    """Slice-weight profiles of ``checkpoint`` on one case folder (or image file).

    The region is centred on the tumour (the ground truth when the case has one, else the
    foreground): by default the whole slice axis with the training patch size in-plane, falling
    back to the training patch (a fixed-form slice attention is bound to its slice count);
    ``roi_size`` sets it. Raises ``ValueError`` when the model has no slice attention."""
    model, ckpt = build_model_from_checkpoint(checkpoint)
    if not slice_attention_sites(model):
        raise ValueError(f"{checkpoint}: the model ({ckpt.get('model_name', 'model')}) has no slice attention "
                         "(pam, pam-adaptive or slice): no slice weights to show")
    task = dict(ckpt.get("task") or {})
    data, _names = _read_case(Path(case), task)
    label = None
    path = Path(case)
    if path.is_dir():  # the ground truth, for the tumour extent (cam's reader drops it)

        match = [c for c in find_cases(path.parent, require_labels=False) if c.case_id == path.name]
        if match and match[0].label_path is not None:
            data["label"] = load_case(match[0])["label"]
    prep = preprocess_case(data, preprocess_config(task.get("preprocess")))
    image = prep["image"]
    if prep.get("label") is not None:
        label = np.asarray(prep["label"])
    multiple = max(int(getattr(model, "size_multiple", 1) or 1), 16)
    axis0 = int(slice_attention_sites(model)[0][1].slice_axis)
    if label is not None and (label > 0).any():  # centre the region on the tumour, not the brain
        centred = np.where(label[None] > 0, image, 0)
    else:
        centred = image
    profiles, patch, lo = [], image, (0,) * (image.ndim - 1)
    tries = []
    if roi_size is None:  # the whole slice axis (adaptive slice attention takes any depth) ...
        full = list(task.get("patch_size") or image.shape[1:])
        full[axis0] = image.shape[1 + axis0] - image.shape[1 + axis0] % multiple or image.shape[1 + axis0]
        tries.append(full)
    tries.append(list(roi_size or task.get("patch_size") or image.shape[1:]))  # ... else the training patch
    for size in tries:
        _, lo = _roi(centred, size, multiple)
        sl = tuple(slice(a, a + min(int(n), m)) for a, n, m in zip(lo, size, image.shape[1:]))
        patch = image[(slice(None), *sl)]
        patch = np.pad(patch, [(0, 0)] + [(0, (-n) % multiple) for n in patch.shape[1:]])
        x = torch.from_numpy(np.ascontiguousarray(patch))[None]
        try:
            profiles = slice_weight_profiles(model, x)
            break
        except (RuntimeError, ValueError) as exc:  # e.g. a fixed-form slice attention bound to its depth
            err = exc
    else:
        raise ValueError(f"{checkpoint}: the model did not run on a region of {tries[-1]} voxels: {err}")
    axis = profiles[0].slice_axis if profiles else 0
    notes = []
    if label is not None:
        lab = np.zeros(patch.shape[1:], dtype=label.dtype)
        src = tuple(slice(a, min(a + s, n)) for a, s, n in zip(lo, patch.shape[1:], label.shape))
        lab[tuple(slice(0, s.stop - s.start) for s in src)] = label[src]
        extent = _tumour_extent(lab, axis)
    else:
        extent = {}
        notes.append("no ground truth for this case: tumour extent not shown")
    case_id = data.get("case_id") or path.name
    meta = prep.get("meta") or {}
    offset = int(lo[axis])
    if tuple(image.shape[1:]) == tuple(meta.get("crop_hi", image.shape[1:])[i] - meta.get("crop_lo", [0] * 3)[i]
                                       for i in range(image.ndim - 1)):
        offset += int((meta.get("crop_lo") or [0] * (image.ndim - 1))[axis])  # slice numbers of the case's files
    else:
        notes.append("the case was resampled: slice numbers are those of the resampled volume")
    return CaseSliceWeights(str(case_id), profiles, axis, offset, extent, notes)


_EXTENT_COLOURS = {"WT": "#2ca02c", "TC": "#d62728", "ET": "#e6b800", "foreground": "#1f77b4"}
_AXIS_NAMES = {0: "first (x)", 1: "second (y)", 2: "third (z)"}


def plot_slice_weights(res: CaseSliceWeights, path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per site: slice weights (± sd band) and the key-slice strip, tumour extent on a twin axis."""
    plt = pyplot("the slice-weight figure")  # optional: the [report] extra

    n = len(res.profiles)
    fig = plt.figure(figsize=(7.5, 2.2 * n + 0.8))
    grid = fig.add_gridspec(3 * n, 1, height_ratios=[5, 1, 1.3] * n, hspace=0.08,  # third row: a gap
                            top=1 - 0.45 / (2.2 * n + 0.8))
    x_max = max((p.positions[-1] + (p.positions[1] - p.positions[0]) / 2 if len(p.positions) > 1 else 1)
                for p in res.profiles) if res.profiles else 1
    for i, p in enumerate(res.profiles):
        ax = fig.add_subplot(grid[3 * i])
        off = res.offset
        xs = p.positions + off
        ax.fill_between(xs, p.weights - p.weights_sd, p.weights + p.weights_sd, color="#1f77b4", alpha=0.2, lw=0)
        ax.plot(xs, p.weights, color="#1f77b4", lw=1.6, marker="o" if len(xs) <= 24 else None, ms=3,
                label="slice weight (mean over channels)")
        ax.set_ylabel("weight", fontsize=8)
        ax.set_xlim(off - 0.5, off + x_max)
        ax.tick_params(labelsize=7, labelbottom=False)
        ax.set_title(f"{p.name}: {len(p.weights)} slices × {p.channels} channels "
                     f"(1 slice = {p.positions[1] - p.positions[0] if len(p.positions) > 1 else 1:g} input slices)",
                     fontsize=8, loc="left")
        if res.extent:
            tw = ax.twinx()
            zs = np.arange(len(next(iter(res.extent.values())))) + off
            for k, v in res.extent.items():
                tw.fill_between(zs, 0, v, step="mid", color=_EXTENT_COLOURS.get(k, "#777777"), alpha=0.18, lw=0)
                tw.step(zs, v, where="mid", color=_EXTENT_COLOURS.get(k, "#777777"), lw=0.9, label=f"{k} voxels")
            tw.set_ylabel("tumour voxels / slice", fontsize=7)
            tw.tick_params(labelsize=7)
            if i == 0:
                h1, l1 = ax.get_legend_handles_labels()
                h2, l2 = tw.get_legend_handles_labels()
                ax.legend(h1 + h2, l1 + l2, fontsize=6.5, loc="upper left", ncol=4, framealpha=0.8)
        strip = fig.add_subplot(grid[3 * i + 1], sharex=ax)
        width = (p.positions[1] - p.positions[0]) if len(p.positions) > 1 else 1.0
        strip.bar(xs, p.kept, width=width * 0.95, color="#444444")
        strip.set_ylim(0, 1)
        strip.set_yticks([0, 1])
        strip.set_ylabel("kept", fontsize=7, rotation=0, ha="right", va="center")
        strip.tick_params(labelsize=6.5, labelbottom=(i == n - 1))
    if n:
        fig.axes[-1].set_xlabel(f"slice number along the {_AXIS_NAMES.get(res.slice_axis, res.slice_axis)} voxel "
                                "axis of the case", fontsize=8)
    fig.suptitle(title or f"Slice attention on {res.case_id}: slice weights per level, tumour extent, key slices "
                          "kept (fraction of channels)", fontsize=9, y=1 - 0.1 / (2.2 * n + 0.8))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


def report_slice_weights(checkpoint: Path | None, data_dir: Path | None, case_ids: Sequence[str],
                         out_dir: Path) -> tuple[Path, str] | None:
    """For ``attnseg report``: the slice-weight figure of the first of ``case_ids`` found in
    ``data_dir``, as ``(png, caption)``; ``None`` when the model has no slice attention or no case
    is found."""
    if checkpoint is None or data_dir is None:
        return None

    model, _ = build_model_from_checkpoint(checkpoint)
    if not slice_attention_sites(model):
        return None
    del model
    try:
        cases = {c.case_id: c for c in find_cases(data_dir, require_labels=False)}
    except (FileNotFoundError, ValueError):
        return None
    for cid in case_ids:
        c = cases.get(cid)
        if c is None:
            continue
        folder = Path(c.image_paths[0]).parent
        res = case_slice_weights(checkpoint, folder if folder.name == cid else c.image_paths[0])
        png = plot_slice_weights(res, out_dir / "slice_weights.png")
        caption = (f"Slice attention on case {cid}: for each slice-attention site (level) the channel-mean slice "
                   "weight along the slice axis (band: ± one sd over channels), the tumour extent along the same "
                   "axis (voxels per slice), and under each panel the fraction of channels whose key-slice "
                   "selection kept the slice. Computed on a region centred on the tumour: the whole slice axis "
                   "(in-plane: the training patch size), or the training patch where the model needs it.")
        return png, caption
    return None
