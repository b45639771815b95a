"""Class activation maps for any attnseg model: CAM (Zhou et al., 2016) where the head is a
linear map of the last features, Grad-CAM (Selvaraju et al., 2017) for any named layer, and
PNG overlays.

Not a registered attention module. Models may return a tensor ``(B, K, *spatial)`` (dense
logits) or ``(B, K)`` (classification logits), a dict (``"out"`` is used, else the first
value) or a list/tuple (first element). The class score that is explained is the logit of
class ``k`` summed over all output voxels (for dense outputs), per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attnseg.runtime.optional import pyplot


def _main_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if not out:
            raise ValueError("model returned an empty dict")
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (list, tuple)) and out:
        return _main_output(out[0])
    raise ValueError(f"cannot find the logits in a model output of type {type(out).__name__}")


def get_layer(model: nn.Module, layer_name: str) -> nn.Module:
    """The submodule called ``layer_name`` (as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if layer_name not in modules:
        close = [n for n in modules if n and (layer_name in n or n.endswith(layer_name.split(".")[-1]))][:8]
        hint = f" Similar: {close}." if close else ""
        raise KeyError(f"model has no layer {layer_name!r}.{hint} See model.named_modules() for the names.")
    return modules[layer_name]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(b, k)`` map to [0, 1] (min → 0, max → 1; constant maps → 0)."""
    flat = maps.flatten(2)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def _to_input_size(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps, size=list(size), mode=mode, align_corners=False)


def _classes(logits: torch.Tensor, target_classes: Sequence[int] | None) -> list[int]:
    k = logits.shape[1]
    classes = list(range(k)) if target_classes is None else [int(c) for c in target_classes]
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"target_classes {bad} out of range for a model with {k} output classes")
    return classes


def grad_cam(model: nn.Module, x: torch.Tensor, layer_name: str, target_classes: Sequence[int] | None = None,
             normalize: bool = True) -> torch.Tensor:
    """Grad-CAM of ``layer_name`` for each target class.

    For each class ``k`` the score ``S_k`` (summed logit) is differentiated w.r.t. the
    layer's output ``A`` ``(B, C, *s)``; channel weights are the spatial means of
    ``∂S_k/∂A``, the map is ``relu(Σ_c w_c A_c)``, resized (linear) to the input's spatial
    size and, with ``normalize``, scaled to [0, 1] per sample and class.

    Args:
        model: any module; run in eval mode here (restored afterwards).
        x: input ``(B, C_in, *spatial)``.
        layer_name: a name from ``model.named_modules()`` whose output is a feature map.
        target_classes: class indices (default: all output classes).

    Returns:
        ``(B, K, *spatial)`` float maps, ``K = len(target_classes)``.
    """
    layer = get_layer(model, layer_name)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        store["a"] = _main_output(out)

    was_training = model.training
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = _main_output(model(x))
            if "a" not in store:
                raise ValueError(f"layer {layer_name!r} was not called in the forward pass")
            a = store["a"]
            if a.dim() < 3:
                raise ValueError(f"layer {layer_name!r} outputs shape {tuple(a.shape)}, not a feature map")
            classes = _classes(logits, target_classes)
            maps = []
            for i, k in enumerate(classes):
                score = logits[:, k].sum()  # samples are independent in eval mode
                (grad,) = torch.autograd.grad(score, a, retain_graph=i < len(classes) - 1)
                w = grad.flatten(2).mean(-1)
                maps.append(F.relu(torch.einsum("bc,bc...->b...", w, a.detach())))
    finally:
        handle.remove()
        model.train(was_training)
    out = _to_input_size(torch.stack(maps, 1), x.shape[2:])
    return _normalise(out) if normalize else out


def _find_head(model: nn.Module) -> str:
    name = ""
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in m.kernel_size):
            name = n
    if not name:
        raise ValueError("no 1×1 convolution head found for CAM; name one with head_name= or use grad_cam")
    return name


def class_activation_maps(model: nn.Module, x: torch.Tensor, head_name: str | None = None,
                          target_classes: Sequence[int] | None = None, normalize: bool = True) -> torch.Tensor:
    """CAM: ``Σ_c W_kc · A_c`` with ``A`` the input of the model's linear head.

    ``head_name`` names a 1×1(×1) convolution whose output channels are the classes (the
    last such convolution by default); its input features ``A`` ``(B, C, *s)`` are
    weighted by the head's weights (bias left out, as in CAM), resized to the input size
    and, with ``normalize``, scaled to [0, 1] per sample and class. Any other head raises a
    ValueError (use :func:`grad_cam`). Returns ``(B, K, *spatial)``.
    """
    name = head_name or _find_head(model)
    head = get_layer(model, name)
    if not (isinstance(head, (nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in head.kernel_size)
            and head.groups == 1):
        raise ValueError(f"CAM needs a 1×1 convolution head; {name!r} is {type(head).__name__}. Use grad_cam.")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inp: Any) -> None:
        store["a"] = inp[0]

    was_training = model.training
    handle = head.register_forward_pre_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            logits = _main_output(model(x))
    finally:
        handle.remove()
        model.train(was_training)
    if "a" not in store:
        raise ValueError(f"head {name!r} was not called in the forward pass")
    del logits
    classes = _classes(torch.empty(1, head.out_channels), target_classes)
    w = head.weight.detach().flatten(1)[classes]  # (K, C)
    maps = torch.einsum("kc,bc...->bk...", w, store["a"])
    out = _to_input_size(maps, x.shape[2:])
    return _normalise(out) if normalize else out


def save_cam_overlays(image: Any, cams: Any, out_dir: str | Path, class_names: Sequence[str] | None = None,
                      slice_index: int | None = None, alpha: float = 0.45, prefix: str = "cam") -> list[Path]:
    """Write one PNG per class: the image in grey with the map overlaid (jet colour map).

    Args:
        image: ``(*spatial)`` or ``(C, *spatial)`` (first channel shown), 2D or 3D, tensor or array.
        cams: ``(K, *spatial)`` maps (e.g. one sample of :func:`grad_cam`).
        out_dir: created if missing.
        class_names: labels for titles/file names (default ``class0``, ``class1``…).
        slice_index: for 3D, the index along the first spatial axis; default: per class, the
            slice holding the largest total map value.
    Returns:
        the written paths, ``{out_dir}/{prefix}_{name}.png``.
    """
    plt = pyplot("CAM overlays")  # optional: the [report] extra

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    maps = np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams, dtype=np.float32)
    if maps.ndim not in (3, 4):
        raise ValueError(f"cams must be (K, H, W) or (K, D, H, W), got shape {maps.shape}")
    spatial = maps.shape[1:]
    if img.ndim == len(spatial) + 1:
        img = img[0]
    if img.shape != spatial:
        raise ValueError(f"image spatial shape {img.shape} does not match the maps' {spatial}")
    names = list(class_names) if class_names is not None else [f"class{k}" for k in range(maps.shape[0])]
    if len(names) != maps.shape[0]:
        raise ValueError(f"{len(names)} class names for {maps.shape[0]} maps")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    paths = []
    for k, name in enumerate(names):
        m, g = maps[k], grey
        title = name
        if m.ndim == 3:
            j = int(slice_index) if slice_index is not None else int(m.reshape(m.shape[0], -1).sum(1).argmax())
            if not 0 <= j < m.shape[0]:
                raise ValueError(f"slice_index {j} out of range for depth {m.shape[0]}")
            m, g, title = m[j], g[j], f"{name} (slice {j})"
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.imshow(g, cmap="gray", interpolation="nearest")
        ax.imshow(m, cmap="jet", alpha=alpha, vmin=0.0, vmax=max(float(maps[k].max()), 1e-12),
                  interpolation="bilinear")
        ax.set_title(title)
        ax.axis("off")
        path = out / f"{prefix}_{name}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


__all__ = ["class_activation_maps", "get_layer", "grad_cam", "save_cam_overlays"]
