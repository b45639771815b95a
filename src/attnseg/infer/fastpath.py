"""CPU fast paths for 3D (and 2D) inference that keep fp32 results exact up to float rounding.

Three things make a PyTorch 3D U-Net run well below what a CPU can do (measured with the
profiler on torch 2.13; figures in docs/inference.md and docs/benchmarks.md):

1. **Batch-1 convolutions on the slow im2col path.** PyTorch picks oneDNN (``mkldnn_convolution``)
   for a CPU float conv only if ``N*C*D*H > 20480`` (or batch > 1, or grouped / large kernels);
   otherwise it runs ``slow_conv3d`` (im2col + GEMM), much slower. Batch-1 windows hit this
   on the first layer of a 4-channel input at 64^3 and on every deep level (e.g. 64 channels
   at 16^3). :func:`prepare_model` swaps ``Conv{2,3}d`` modules to subclasses that call oneDNN
   directly (same weights, same state dict, same maths). Transposed convolutions with
   kernel == stride (U-Net up-sampling) have the same problem (``slow_conv_transpose3d``);
   they become one matmul plus a voxel shuffle. ``InstanceNorm`` without running statistics
   is computed with the group-norm kernel (one group per channel), faster on CPU
   (channels-last inputs are normalised through a channels-first copy: PyTorch's channels-last
   group-norm kernel is inaccurate on large maps).
2. **Memory format.** oneDNN is fastest with channels-last activations, and transposed 3D
   convolutions are faster in channels-last (``channels_last_3d``); the model's weights and
   the inputs are converted once.
3. **malloc churn.** glibc serves allocations above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with
   ``mmap`` and returns them with ``munmap`` on free, so every window re-faults hundreds of MB of
   activations (kernel time). :func:`tune_malloc` uses ``mallopt`` to serve large blocks from
   the heap and keep freed memory (no mmap, high trim threshold), in-process, without re-exec.

``enable_cpu_fastpaths()`` (:mod:`attnseg.runtime.cpu`, re-exported here) applies the process-wide
part (3) when the CLI or the trainer opts in; ``prepare_model`` / ``prepare_input``
the per-model part (1, 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# process-wide settings live in runtime.cpu (re-exported here under their first import path)
from attnseg.runtime.cpu import enable_cpu_fastpaths, ensure_malloc_env, tune_malloc

__all__ = [
    "GroupNormInstanceNorm2d",
    "GroupNormInstanceNorm3d",
    "OneDNNConv2d",
    "PatchConvTranspose2d",
    "PatchConvTranspose3d",
    "OneDNNConv3d",
    "enable_cpu_fastpaths",
    "ensure_malloc_env",
    "onednn_bf16_supported",
    "prepare_input",
    "prepare_model",
    "tune_malloc",
    "unprepare_model",
]

_STATE: dict[str, Any] = {}
# looked up at call time so that tests can observe the routing
_mkldnn_conv = torch.ops.aten.mkldnn_convolution


def onednn_bf16_supported() -> bool:
    """True if oneDNN can run bf16 convolutions natively on this CPU (AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT); elsewhere bf16 convolutions are emulated and slower than fp32."""
    if "bf16" not in _STATE:
        try:
            x = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bfloat16)
            torch.ops.aten.mkldnn_convolution(x, torch.zeros(1, 1, 1, 1, 1, dtype=torch.bfloat16), None,
                                              [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
            _STATE["bf16"] = True
        except RuntimeError:
            _STATE["bf16"] = False
    return bool(_STATE["bf16"])


def _strided_pointwise(self: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A 1×1 convolution with stride ``s`` and no padding is the stride-1 one on every
    ``s``-th voxel: returns ``(x subsampled, stride)`` (``x`` unchanged for other convolutions).

    Why: on torch 2.13 (CPU, one thread) the backward of a 2D 1×1 stride-2 convolution on a
    channels-last input corrupts the heap for some small shapes (e.g. 2×4×16×16 → 8 channels,
    "double free or corruption"; tests/infer/test_fastpath.py), both through oneDNN and
    PyTorch's own path; the subsampled stride-1 form does not."""
    stride = list(self.stride)
    if all(k == 1 for k in self.kernel_size) and any(s > 1 for s in stride) and not any(self.padding):
        x = x[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]
        stride = [1] * len(stride)
    return x, stride


def _onednn_forward(self: nn.Conv2d | nn.Conv3d, x: torch.Tensor, nd: int, base: type) -> torch.Tensor:
    usable = (x.device.type == "cpu" and x.dim() == nd + 2 and self.padding_mode == "zeros"
              and not isinstance(self.padding, str) and torch.backends.mkldnn.is_available())
    if not usable:
        return base.forward(self, x)
    x, stride = _strided_pointwise(self, x)
    w, b = self.weight, self.bias
    if torch.is_autocast_enabled("cpu"):
        # autocast does not know this op: cast the way it would cast conv{2,3}d
        dt = torch.get_autocast_dtype("cpu")
        x, w = x.to(dt), w.to(dt)
        b = b.to(dt) if b is not None else None
    if x.dtype == w.dtype and x.dtype in (torch.float32, torch.bfloat16) and \
            (x.dtype == torch.float32 or onednn_bf16_supported()):
        return _mkldnn_conv(x, w, b, list(self.padding), stride, list(self.dilation), self.groups)
    # PyTorch's own convolution (e.g. emulated bf16, fp16), with the stride chosen above
    conv = F.conv2d if nd == 2 else F.conv3d
    return conv(x, w, b, stride, self.padding, self.dilation, self.groups)


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that always uses oneDNN on CPU (falls back to the default otherwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _onednn_forward(self, x, 3, nn.Conv3d)


class OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` that always uses oneDNN on CPU (falls back to the default otherwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _onednn_forward(self, x, 2, nn.Conv2d)


# below this many elements the in-place form saves too little memory to matter
_INPLACE_NORM_MIN = 1 << 20


def _instance_norm_inplace(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           eps: float) -> torch.Tensor:
    """Instance norm written into ``x`` itself (contiguous ``(B, C, *spatial)``), inference only.

    ``x`` is centred in place (per-channel sum), its variance is the mean square of the centred
    values (accumulated block by block), then eval-mode batch norm over the ``(1, B·C, …)``
    view with ``out=x``. Agrees with group norm to ~1e-6. Saves one activation map at the
    memory peak for a norm that directly follows a convolution, whose output nobody else holds
    (:func:`prepare_model`).
    """
    b, c = x.shape[:2]
    v = x.view(b * c, -1)
    n = v.shape[1]
    cols = max(1, (1 << 19) // v.shape[0])
    if x.dtype in (torch.float32, torch.float64):
        v.sub_(v.sum(1, keepdim=True).div_(n))  # centred in place: the variance below cannot cancel
        # sum of squares block by block along the voxels (a loop over memory blocks): the block's
        # square stays small, and torch.sum's cascade keeps float32 accurate (vector_norm's
        # float32 accumulation is off by ~5e-5 relative at 128^3, 100x group norm's error)
        var = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for j in range(0, n, cols):
            blk = v[:, j:j + cols]
            var += (blk * blk).sum(1)
        mean = torch.zeros_like(var)
    else:
        # bf16/fp16 (autocast): statistics in float32 (centring in place would round the
        # mean to 8 bits), passed to the mixed-dtype batch norm with float32 parameters
        mean = v.sum(1, dtype=torch.float32).div_(n)
        var = torch.zeros(v.shape[0], dtype=torch.float32, device=v.device)
        for j in range(0, n, cols):
            blk = v[:, j:j + cols].float().sub_(mean[:, None])
            var += (blk * blk).sum(1)
    var.div_(n)
    w = None if weight is None else weight.to(mean.dtype).repeat(b)
    bb = None if bias is None else bias.to(mean.dtype).repeat(b)
    flat = x.view(1, b * c, *x.shape[2:])
    torch.ops.aten.native_batch_norm.out(flat, w, bb, mean, var, False, 0.0, eps, out=flat,
                                         save_mean=mean.new_empty(0), save_invstd=mean.new_empty(0))
    return x


def _group_norm_forward(self: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor, base: type) -> torch.Tensor:
    # instance norm == group norm with one channel per group; PyTorch's CPU group-norm kernel
    # is ~5x faster than instance_norm (which runs batch_norm on a (1, N*C, ...) copy) and keeps
    # channels-last tensors channels-last
    if self.track_running_stats or x.dim() != self.weight_dim + 2 or x.shape[1] != self.num_features:
        return base.forward(self, x)
    if getattr(self, "_attnseg_inplace", False) and not torch.is_grad_enabled() and x.is_contiguous() \
            and x.is_floating_point() and x.numel() >= _INPLACE_NORM_MIN:
        return _instance_norm_inplace(x, self.weight, self.bias, self.eps)
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    if x.is_contiguous(memory_format=fmt) and not x.is_contiguous():
        # the channels-last group-norm kernel loses precision on large maps (2.5e-3 abs error
        # at 8 x 128^3, torch 2.13): normalise a channels-first copy, hand back channels-last
        y = F.group_norm(x.contiguous(), self.num_features, self.weight, self.bias, self.eps)
        return y.contiguous(memory_format=fmt)
    return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class GroupNormInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (without running statistics) computed with the group-norm kernel."""

    weight_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _group_norm_forward(self, x, nn.InstanceNorm3d)


class GroupNormInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (without running statistics) computed with the group-norm kernel."""

    weight_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _group_norm_forward(self, x, nn.InstanceNorm2d)


def _patch_transpose_forward(self: nn.ConvTranspose2d | nn.ConvTranspose3d, x: torch.Tensor, nd: int,
                             base: type) -> torch.Tensor:
    # kernel == stride, no padding/groups/dilation: every input voxel writes its own k^d block,
    # so the transposed conv is one matmul (C -> O*k^d) and a pixel shuffle. PyTorch otherwise
    # runs slow_conv_transpose3d for batch 1 (same size heuristic as for convolutions).
    k = tuple(self.kernel_size)
    simple = (tuple(self.stride) == k and not any(self.padding) and not any(self.output_padding)
              and self.groups == 1 and all(d == 1 for d in self.dilation) and x.dim() == nd + 2
              and x.device.type == "cpu")
    if not simple:
        return base.forward(self, x)
    n, c, *sp = x.shape
    o = self.out_channels
    y = x.movedim(1, -1).reshape(-1, c) @ self.weight.reshape(c, -1).to(x.dtype if not torch.is_autocast_enabled("cpu")
                                                                       else torch.get_autocast_dtype("cpu"))
    y = y.view(n, *sp, o, *k)
    if nd == 3:
        y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (n, d, k0, h, k1, w, k2, o)
    else:
        y = y.permute(0, 1, 4, 2, 5, 3)  # (n, h, k0, w, k1, o)
    y = y.reshape(n, *(s * kk for s, kk in zip(sp, k)), o)
    if self.bias is not None:
        y = y + self.bias.to(y.dtype)
    return y.movedim(-1, 1)  # channels-last view


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with kernel == stride computed as a matmul + voxel shuffle on CPU."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            return nn.ConvTranspose3d.forward(self, x, output_size)
        return _patch_transpose_forward(self, x, 3, nn.ConvTranspose3d)


class PatchConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with kernel == stride computed as a matmul + pixel shuffle on CPU."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            return nn.ConvTranspose2d.forward(self, x, output_size)
        return _patch_transpose_forward(self, x, 2, nn.ConvTranspose2d)


_SWAPS = {nn.Conv3d: OneDNNConv3d, nn.Conv2d: OneDNNConv2d, nn.ConvTranspose3d: PatchConvTranspose3d,
          nn.ConvTranspose2d: PatchConvTranspose2d}
_NORM_SWAPS = {nn.InstanceNorm3d: GroupNormInstanceNorm3d, nn.InstanceNorm2d: GroupNormInstanceNorm2d}


_FRESH_OUTPUT = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.modules.batchnorm._NormBase,
                 nn.GroupNorm, nn.LayerNorm)
_INPLACE_ACTS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.ReLU6, nn.SiLU, nn.Hardswish)
_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _inplace_activations(model: nn.Module) -> int:
    # inside an nn.Sequential an activation directly after a conv/norm receives a tensor nobody
    # else holds, so it may overwrite it: one activation map less at the memory peak
    n = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq)
        for prev, m in zip(mods, mods[1:]):
            if isinstance(m, _INPLACE_ACTS) and isinstance(prev, _FRESH_OUTPUT) and not m.inplace:
                m.inplace = True
                n += 1
            elif isinstance(m, (GroupNormInstanceNorm2d, GroupNormInstanceNorm3d)) and isinstance(prev, _CONVS):
                # an instance norm right after a conv normalises the conv's output in place
                m._attnseg_inplace = True
                n += 1
    return n


def prepare_model(model: nn.Module, spatial_dims: int = 3, onednn: bool = True,
                  channels_last: bool = True, fast_norm: bool = True, inplace_act: bool = True) -> nn.Module:
    """Convert ``model`` in place for fast CPU inference and return it.

    ``onednn``: swap every plain ``nn.Conv3d``/``nn.Conv2d`` (exact class, not subclasses) to
    the oneDNN-routing subclass, and ``nn.ConvTranspose{2,3}d`` with kernel == stride to the
    matmul formulation; parameters and state-dict keys are unchanged.
    ``fast_norm``: compute ``nn.InstanceNorm{2,3}d`` without running statistics with the
    group-norm kernel (same maths; float rounding differs by ~1e-6 relative).
    ``channels_last``: convert 4D/5D weights to channels-last / channels-last-3d (by rank). Has no effect on CUDA models
    other than the memory format.
    ``inplace_act``: activations that directly follow a conv/norm inside an ``nn.Sequential``
    (e.g. ``ConvNormAct``) run in place, and so do instance norms (with ``fast_norm``) that
    directly follow a convolution (without gradient only: in-place ops can break autograd;
    a forward hook that keeps such a convolution's output sees it normalised).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    swaps = {**(_SWAPS if onednn else {}), **(_NORM_SWAPS if fast_norm else {})}
    for m in model.modules():
        new = swaps.get(type(m))
        if new is not None:
            m.__class__ = new
    if inplace_act and not model.training:
        _inplace_activations(model)
    if channels_last:
        # by rank, not one format for the model: a 3D model may hold 2D convolutions (hdenseunet),
        # whose 4-D weights model.to(memory_format=channels_last_3d) refuses
        model._apply(_channels_last_by_rank)
    return model


def _channels_last_by_rank(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def unprepare_model(model: nn.Module) -> nn.Module:
    """Undo the class swaps of :func:`prepare_model` (e.g. before export); weights stay as they are."""
    back = {v: k for k, v in {**_SWAPS, **_NORM_SWAPS}.items()}
    for m in model.modules():
        if type(m) in back:
            m.__class__ = back[type(m)]
    return model


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """Channels-last(-3d) copy of a 4D/5D tensor (no copy if it already is); other ranks unchanged."""
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
