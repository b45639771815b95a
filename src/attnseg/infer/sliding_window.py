"""Sliding-window inference over 2D/3D volumes with Gaussian or constant blending.

The window grid, the Gaussian importance map and the padding of small volumes follow MONAI's
``sliding_window_inference`` exactly (same window starts, same ``sigma = sigma_scale * roi``,
same clamp of the map at ``max(min, 1e-3)``), so with the same settings both produce the same
logits (tested to 1e-4). What differs is how the work is done:

* windows stream through the network and are accumulated in place into one output buffer
  (``addcmul_``), so memory is bounded by ``output + weight map + one window batch``;
* the per-voxel normaliser (sum of window weights) is built once per geometry and cached;
* window batches are gathered into a reused buffer (optionally channels-last), not ``torch.cat``;
* optional mirroring test-time augmentation (all flip combinations of the chosen axes,
  averaged per window before stitching) and bf16 autocast for the network.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], Any]

__all__ = ["SlidingWindowInferer", "importance_map", "window_starts", "mirror_combinations"]


def _tuple(v: float | int | Sequence, n: int, name: str) -> tuple:
    if isinstance(v, (int, float)):
        return (v,) * n
    v = tuple(v)
    if len(v) != n:
        raise ValueError(f"{name} has {len(v)} values but the input has {n} spatial dimensions")
    return v


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis (MONAI's grid: step ``int(roi * (1 - overlap))``,
    at least 1; the last window is shifted back so that it ends at ``size``)."""
    if roi >= size:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    n = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
    return [min(d * step, size - roi) for d in range(n)]


def importance_map(roi: Sequence[int], blend: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-voxel weight of a window, shape ``roi``, float32.

    ``gaussian``: separable Gaussian centred on the window with ``sigma = sigma_scale * roi`` per
    axis, peak 1, clamped below at ``max(min, 1e-3)`` so that window corners still count
    (MONAI's definition). ``constant``: all ones.
    """
    roi = tuple(int(r) for r in roi)
    if blend == "constant":
        return torch.ones(roi, dtype=torch.float32, device=device)
    if blend != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    sig = _tuple(sigma_scale, len(roi), "sigma_scale")
    w: torch.Tensor | None = None
    for i, (r, s) in enumerate(zip(roi, sig)):
        x = torch.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x ** 2 / (-2 * (r * s) ** 2))
        w = g if w is None else w.unsqueeze(-1) * g[(None,) * i]
    assert w is not None
    return w.clamp_(min=max(w.min().item(), 1e-3))


def stitch_device(device: torch.device, nbytes: int, fraction: float = 0.5) -> torch.device:
    """Where to stitch ``nbytes`` of output + weight buffers for windows predicted on ``device``:
    the GPU itself when they take at most ``fraction`` of its free memory (the rest stays for the
    network's activations), the CPU otherwise (a copy per window, but no out-of-memory)."""
    if device.type != "cuda":
        return device
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes <= fraction * free else torch.device("cpu")


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """All subsets of the spatial ``axes`` (0-based), the empty one (no flip) first."""
    axes = tuple(sorted(set(axes or ())))
    return [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]


def _main_output(out: Any) -> torch.Tensor:
    # training-mode models return a dict with "out"; some predictors return tuples
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if "out" not in out:
            raise ValueError(f"predictor returned a dict without an 'out' key (keys: {sorted(out)})")
        return out["out"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"predictor must return a tensor, a dict with 'out' or a tuple, got {type(out).__name__}")


class SlidingWindowInferer:
    """Predict a whole volume window by window and blend the windows.

    Args:
        roi_size: window size per spatial axis (an int is repeated); values ``<= 0`` mean the
            whole axis.
        overlap: fraction of overlap between neighbouring windows, float or one per axis, in [0, 1).
        sw_batch_size: windows per network call.
        blend: ``"gaussian"`` (down-weights window borders) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window size (per axis or one value).
        padding_mode, cval: how volumes smaller than the window are padded (``F.pad`` modes);
            the padding is symmetric and removed from the output.
        device: where the stitched output lives (default: the input's device). ``"auto"``: on
            the input's GPU when the output and weight buffers fit in half its free memory
            (:func:`stitch_device`; no copy per window), else on the CPU.
        dtype: dtype of the stitching buffers (default float32).
        mirror_axes: spatial axes (0-based: 0 = first spatial axis) for mirroring test-time
            augmentation; each window is predicted for every flip combination and the logits
            are averaged (``2**len(axes)`` network calls per window).
        precision: ``"fp32"`` or ``"bf16"`` (network under bf16 autocast; stitching stays in
            ``dtype``).
        output: ``"logits"`` or ``"probs"`` (activation applied after blending the logits).
        activation: ``"sigmoid"`` (region models) or ``"softmax"`` (class models), for ``"probs"``.
        channels_last: gather window batches in channels-last memory format (fast oneDNN path).
        split_cpu_batches: on CPU, take the windows one at a time whatever ``sw_batch_size``
            says (same outputs up to float rounding). With oneDNN convolutions (attnseg's CPU
            fast path) a window batch buys no throughput on CPU but doubles the activation
            memory (benchmarks/sliding_window.py, ROI 128³: 48.4 CPU-s with whole batches of 2
            vs 50.7 at batch 1; peak 2317 MB with whole batches of 2 vs 1337-1673 MB one window
            at a time); ``None`` (default) splits on CPU only; ``False`` never splits.
        progress: optional callback ``progress(done_windows, total_windows)``.
        compile: run the predictor through ``torch.compile`` (inductor, ``dynamic=False``, with
            freezing: weights folded as constants) — compiled once per window shape and reused
            for every window and case of that shape; the first call's cost (the compilation)
            is reported through ``log``. The predictor must be an ``nn.Module`` in eval mode.
        log: where the compile messages go (default: ``print`` to stderr).

    Call: ``inferer(x, predictor)`` with ``x`` of shape (B, C, *spatial); returns (B, K, *spatial).
    ``predictor(window)`` receives (n, C, *roi) and returns (n, K, *roi) logits (or a dict with
    ``"out"``, or a tuple whose first item is used).
    """

    def __init__(self, roi_size: int | Sequence[int], overlap: float | Sequence[float] = 0.5,
                 sw_batch_size: int = 1, blend: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125,
                 padding_mode: str = "constant", cval: float = 0.0, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, mirror_axes: Sequence[int] | None = None,
                 precision: str = "fp32", output: str = "logits", activation: str = "sigmoid",
                 channels_last: bool = False, progress: Callable[[int, int], None] | None = None,
                 split_cpu_batches: bool | None = None, compile: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if blend not in ("gaussian", "constant"):
            raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if output not in ("logits", "probs"):
            raise ValueError(f"output must be 'logits' or 'probs', got {output!r}")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        ov = overlap if isinstance(overlap, (int, float)) else tuple(overlap)
        for o in (ov,) if isinstance(ov, (int, float)) else ov:
            if not 0 <= o < 1:
                raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.roi_size = roi_size
        self.overlap = ov
        self.sw_batch_size = int(sw_batch_size)
        self.blend = blend
        self.sigma_scale = sigma_scale
        self.padding_mode = padding_mode
        self.cval = cval
        self.auto_device = device == "auto"
        self.device = torch.device(device) if device is not None and not self.auto_device else None
        self.dtype = dtype
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else ()
        self.precision = precision
        self.output = output
        self.activation = activation
        self.channels_last = channels_last
        self.progress = progress
        self.split_cpu_batches = split_cpu_batches
        self._cache: dict[tuple, torch.Tensor] = {}
        self.compile = bool(compile)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._compiled: tuple[Any, Any] | None = None  # (predictor, its compiled form)
        self._compiled_shapes: set[tuple] = set()
        self.compile_seconds: dict[tuple, float] = {}  # first-call time per (shape, precision)

    # ------------------------------------------------------------------ geometry
    def plan(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], list[int], tuple[int, ...], list[tuple]]:
        """Window geometry for a volume of spatial shape ``spatial``.

        Returns ``(roi, pad, padded_shape, windows)`` where ``pad`` is in ``F.pad`` order (last
        axis first) and ``windows`` is the list of slice tuples into the padded volume.
        """
        nd = len(spatial)
        roi = tuple(int(s) if (r is None or r <= 0) else int(r)
                    for r, s in zip(_tuple(self.roi_size, nd, "roi_size"), spatial))
        pad: list[int] = []
        for k in reversed(range(nd)):  # F.pad order: last axis first
            diff = max(roi[k] - spatial[k], 0)
            pad += [diff // 2, diff - diff // 2]
        padded = tuple(max(s, r) for s, r in zip(spatial, roi))
        ov = _tuple(self.overlap, nd, "overlap")
        starts = [window_starts(s, r, o) for s, r, o in zip(padded, roi, ov)]
        windows = [tuple(slice(a, a + r) for a, r in zip(st, roi)) for st in itertools.product(*starts)]
        return roi, pad, padded, windows

    def _weights(self, roi: tuple[int, ...], padded: tuple[int, ...], windows: list[tuple],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (roi, padded, len(windows), str(device), self.blend, str(self.sigma_scale), self.dtype)
        if key not in self._cache:
            self._cache.clear()  # keep only the current geometry
            w = importance_map(roi, self.blend, self.sigma_scale, device).to(self.dtype)
            norm = torch.zeros(padded, dtype=self.dtype, device=device)
            for sl in windows:
                norm[sl] += w
            self._cache[key] = (w, norm)
        return self._cache[key]

    # ------------------------------------------------------------------ inference
    def _compiled_predictor(self, predictor: Predictor) -> Predictor:
        """``predictor`` compiled once (kept while the same predictor is passed); inductor's
        guards recompile for a new window shape or precision, and reuse what they compiled."""
        if self._compiled is None or self._compiled[0] is not predictor:
            if not isinstance(predictor, torch.nn.Module):
                raise ValueError("compile=True needs an nn.Module predictor")
            # freezing folds the (eval-mode, no-grad) weights into the graph as constants
            fn = torch.compile(predictor, backend="inductor", dynamic=False, options={"freezing": True})
            self._compiled = (predictor, fn)
            self._compiled_shapes = set()
        return self._compiled[1]

    def _call(self, predictor: Predictor, xin: torch.Tensor) -> Any:
        if not self.compile:
            return predictor(xin)
        fn = self._compiled_predictor(predictor)
        key = (tuple(xin.shape), self.precision)
        if key in self._compiled_shapes:
            return fn(xin)
        t0 = time.perf_counter()
        out = fn(xin)
        self._compiled_shapes.add(key)
        self.compile_seconds[key] = time.perf_counter() - t0
        self.log(f"torch.compile: first call for windows {tuple(xin.shape)} ({self.precision}) took "
                 f"{self.compile_seconds[key]:.1f} s (compilation; later windows of this shape reuse it)")
        return out

    def _predict(self, win: torch.Tensor, predictor: Predictor) -> torch.Tensor:
        nd = win.dim() - 2
        acc: torch.Tensor | None = None
        combos = mirror_combinations(self.mirror_axes)
        for axes in combos:
            if any(a >= nd or a < 0 for a in axes):
                raise ValueError(f"mirror axis out of range for {nd} spatial dimensions: {self.mirror_axes}")
            dims = [a + 2 for a in axes]
            xin = torch.flip(win, dims) if dims else win
            ctx = torch.autocast(win.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
            with ctx:
                y = _main_output(self._call(predictor, xin))
            if y.shape[0] != win.shape[0] or tuple(y.shape[2:]) != tuple(win.shape[2:]):
                raise ValueError(f"predictor output shape {tuple(y.shape)} does not match the window "
                                 f"{tuple(win.shape)} (batch and spatial sizes must be equal)")
            if dims:
                y = torch.flip(y, dims)
            y = y.to(self.dtype)
            acc = y if acc is None else acc.add_(y)
        assert acc is not None
        if len(combos) > 1:
            acc.div_(len(combos))
        return acc

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, predictor: Predictor) -> torch.Tensor:
        """Blend ``predictor`` over all windows of ``x`` (B, C, *spatial) → (B, K, *spatial)."""
        if x.dim() < 3:
            raise ValueError(f"input must be (B, C, *spatial), got shape {tuple(x.shape)}")
        batch, chans, *spatial = x.shape
        nd = len(spatial)
        out_device = self.device or x.device
        roi, pad, padded, windows = self.plan(spatial)
        if any(pad):
            x = F.pad(x, pad, mode=self.padding_mode, value=self.cval) if self.padding_mode == "constant" \
                else F.pad(x, pad, mode=self.padding_mode)
        w = norm = w_win = None  # made once the output's device is known (first window)
        jobs = [(b, sl) for b in range(batch) for sl in windows]
        total = len(jobs)
        out: torch.Tensor | None = None
        fmt = (torch.channels_last_3d if nd == 3 else torch.channels_last) if self.channels_last and nd in (2, 3) \
            else torch.contiguous_format
        buf: torch.Tensor | None = None
        split = x.device.type == "cpu" if self.split_cpu_batches is None else self.split_cpu_batches
        step = 1 if split else self.sw_batch_size  # see split_cpu_batches
        for i in range(0, total, step):
            chunk = jobs[i:i + step]
            if len(chunk) == 1:
                b, sl = chunk[0]
                win = x[(slice(b, b + 1), slice(None), *sl)]
                if self.channels_last:
                    win = win.contiguous(memory_format=fmt)
            else:
                if buf is None or buf.shape[0] != len(chunk):
                    buf = torch.empty((len(chunk), chans, *roi), dtype=x.dtype, device=x.device,
                                      memory_format=fmt)
                for j, (b, sl) in enumerate(chunk):
                    buf[j].copy_(x[(b, slice(None), *sl)])
                win = buf
            pred = self._predict(win, predictor)
            if out is None:
                if self.auto_device:
                    itemsize = torch.empty((), dtype=self.dtype).element_size()
                    out_device = stitch_device(x.device, (batch * pred.shape[1] + 1) * math.prod(padded) * itemsize)
                w, norm = self._weights(roi, padded, windows, out_device)
                w_win = w.to(x.device) if w.device != x.device else w
                out = torch.zeros((batch, pred.shape[1], *padded), dtype=self.dtype, device=out_device)
            if pred.device != out_device:
                pred = pred.to(out_device)
                ww = w
            else:
                ww = w_win
            for j, (b, sl) in enumerate(chunk):
                out[(b, slice(None), *sl)].addcmul_(pred[j], ww)
            if self.progress is not None:
                self.progress(min(i + len(chunk), total), total)
        assert out is not None
        out.div_(norm)
        if any(pad):
            crop = [slice(None), slice(None)]
            for k in range(nd):
                lo = pad[2 * (nd - 1 - k)]
                crop.append(slice(lo, lo + spatial[k]))
            out = out[tuple(crop)].contiguous()
        if self.output == "probs":
            out = torch.sigmoid(out) if self.activation == "sigmoid" else torch.softmax(out, dim=1)
        return out
