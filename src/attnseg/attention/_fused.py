"""Memory-lean "pool → tiny network → rescale" kernel shared by the SE-style modules.

Many attention modules compute a small scale tensor from average-pooled statistics of
their input and multiply the input by it::

    z = mean of x over every axis except (B, C, slice)     # (B, C, D), tiny
    a = f(z; params)                                         # (B, C, D), tiny
    y = x * a   (broadcast over the pooled axes)

Plain autograd for this keeps the full-size product ``g * x`` and a second full-size
gradient (the broadcast of ``dL/dz``) and adds them, i.e. several extra passes over
memory. :class:`PooledScale` does the backward in two passes: one blocked dot product
``dL/da = Σ g·x`` (the product is formed block by block in cache, never full-size) and one
multiply ``g·a`` with ``dL/dz / n`` added in place into the input gradient.
The tiny network's graph (recorded on ``z`` in the forward) gives ``dL/dz`` and the
parameter gradients, so nothing full-size is saved apart from ``x``
itself (which any multiply must keep anyway).

``x`` is handled as the 5-D view ``(B, C, pre, D, post)``: ``D`` is the axis that is not
pooled (the slice axis; ``D = 1`` gives ordinary channel attention) and ``pre``/``post``
are the products of the spatial sizes before/after it, so no copy is needed for any axis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch


def slice_layout(shape: Sequence[int], slice_axis: int | None) -> tuple[int, int, int, int, int]:
    """``(B, C, pre, D, post)`` for ``x.shape`` with the slice axis given as an index into
    the spatial dims (``None`` → one "slice" covering everything, i.e. channel pooling)."""
    b, c, *spatial = (int(s) for s in shape)
    if slice_axis is None:
        n = 1
        for s in spatial:
            n *= s
        return b, c, 1, 1, n
    pre = post = 1
    for s in spatial[:slice_axis]:
        pre *= s
    for s in spatial[slice_axis + 1:]:
        post *= s
    return b, c, pre, spatial[slice_axis], post


def broadcast_shape(shape: Sequence[int], slice_axis: int | None) -> list[int]:
    """Shape that broadcasts a ``(B, C, D)`` tensor against ``x.shape`` along the slice axis
    (``None``: a ``(B, C, 1)`` tensor over every spatial axis)."""
    b, c, *spatial = (int(s) for s in shape)
    return [b, c] + [spatial[i] if i == slice_axis else 1 for i in range(len(spatial))]


def pooled_mean(x5: torch.Tensor) -> torch.Tensor:
    """``(B, C, pre, D, post)`` → per-slice mean ``(B, C, D)``."""
    if x5.shape[2] == 1:
        return x5[:, :, 0].mean(-1)
    return x5.mean(dim=(2, 4))


def pooled_max(x5: torch.Tensor) -> torch.Tensor:
    """``(B, C, pre, D, post)`` → per-slice max ``(B, C, D)``."""
    if x5.shape[2] == 1:
        return x5[:, :, 0].amax(-1)
    return x5.amax(dim=(2, 4))


def eager() -> bool:
    """Not being scripted, traced, exported or compiled (tracers, exporters and
    ``torch.compile`` must see plain ops: they cannot look into numba kernels or custom nodes)."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def same_precision(x: torch.Tensor, params: Sequence[torch.Tensor] = ()) -> bool:
    """``x`` and ``params`` share one floating dtype and autocast is off for ``x``'s device.

    The custom nodes run their forward and backward with plain ops on the tensors they are
    given; under autocast (bf16/fp16 activations, float32 parameters) those ops would mix
    dtypes (e.g. a bf16 × float32 matrix product in the backward, where autocast is off), so
    mixed precision takes the plain autograd path, which autocast casts op by op."""
    if torch.is_autocast_enabled(x.device.type):
        return False
    return x.is_floating_point() and all(p.dtype == x.dtype for p in params)


def use_fused(x: torch.Tensor, params: Sequence[torch.Tensor]) -> bool:
    """The custom-backward path is used only when a gradient will be taken, we are not
    being traced, exported or compiled (those see the plain, equivalent ops), ``x`` and
    ``params`` share one dtype outside autocast (:func:`same_precision`), and
    ``ATTNSEG_FUSED`` is not ``0`` (benchmarks/whole_step.py compares against plain autograd)."""
    if not torch.is_grad_enabled() or not eager() or not same_precision(x, params) or \
            os.environ.get("ATTNSEG_FUSED", "1") == "0":
        return False
    return x.requires_grad or any(p.requires_grad for p in params)


# elements per block of the blocked dot product: the product temporary (1 MiB in fp32)
# stays in cache instead of being a full-size tensor written to and read back from memory
_BLOCK = 1 << 18
# up to this many elements (8 MiB in fp32) the whole product stays in the last-level cache and
# one product-and-sum is faster than blocks (0.41 vs 0.56 ms at 2x32x128x128)
_SMALL = 1 << 21


def _blocked_dot(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ g·x`` over every dim but the first and the next-to-last, for ``(N, pre, D, post)``
    or ``(N, 1, post)`` views: ``(N, D)`` / ``(N,)``-shaped result.

    Computed block by block along ``N`` (a loop over memory blocks, not over channels or
    slices) so that no full-size product is materialised; batched matrix products
    (``einsum``/``bmm``) are several times slower for these shapes on CPU. On accelerators,
    and for tensors small enough to stay in cache, the plain product-and-sum is used.
    """
    dims = (1, 3) if g.dim() == 4 else (1, 2)
    if g.device.type != "cpu" or g.numel() <= _SMALL:
        return (g * x).sum(dims)
    per_row = g[0].numel()
    rows = max(1, _BLOCK // max(per_row, 1))
    n = g.shape[0]
    if n <= rows:
        return (g * x).sum(dims)
    out = torch.empty((n, g.shape[2]) if g.dim() == 4 else (n,), dtype=g.dtype, device=g.device)
    for i in range(0, n, rows):
        torch.sum(g[i:i + rows] * x[i:i + rows], dims, out=out[i:i + rows])
    return out


def _record_tiny(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tiny network ``fn`` on a detached ``z`` with autograd on: ``(zz, fn(zz))``."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_()
        return zz, fn(zz)


def _take_graph(ctx, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny network's graph recorded in the forward (used once); recorded again for a
    second backward through a retained graph."""
    graph, ctx.graph = ctx.graph, None
    return graph if graph is not None else _record_tiny(ctx.fn, z)


def graph_grads(out: torch.Tensor, grad_out: torch.Tensor, leaves: Sequence[torch.Tensor],
                params: Sequence[torch.Tensor], needs: Sequence[bool], retain: bool = False
                ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Back-propagate ``grad_out`` through a small graph recorded from ``leaves`` (and module
    parameters) to ``out``: ``(one gradient per leaf, one per parameter)``, the latter zeros
    for an unused parameter that ``needs`` one and None where it needs none."""
    wanted = [p for p, need in zip(params, needs) if need]
    inputs = list(leaves) + wanted
    with torch.enable_grad():
        grads = list(torch.autograd.grad(out, inputs, grad_out, allow_unused=True, retain_graph=retain)) \
            if inputs else []
    it = iter(grads[len(leaves):])
    out_params: list[torch.Tensor | None] = []
    for p, need in zip(params, needs):
        gp = next(it) if need else None
        out_params.append(torch.zeros_like(p) if need and gp is None else gp)
    return grads[:len(leaves)], out_params


def _tiny_backward(zz: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor, want_z: bool,
                   params: Sequence[torch.Tensor], needs: Sequence[bool]
                   ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Back-propagate ``grad_out`` through the recorded tiny network: ``(dL/dz or None, one
    gradient per parameter)`` (see :func:`graph_grads`)."""
    gz, out_params = graph_grads(out, grad_out, [zz] if want_z else [], params, needs)
    return (gz[0] if want_z else None), out_params


class ManualTiny:
    """A tiny network with a hand-written backward, for :class:`PooledScale`.

    Recording the tiny network with autograd and back-propagating through it costs tens of
    small dispatched operations (~1.5 ms for PAM's at 2×32×128×128, as much as the whole
    full-size work); a subclass computes the same values and gradients with a handful of
    plain tensor operations and no graph. Subclasses implement:

    * ``forward(z, params) -> (a, saved)``: ``z`` ``(B, C, D)`` → ``a`` ``(B, C, D)`` (no
      autograd; ``saved`` is whatever ``backward`` needs, tiny tensors only);
    * ``backward(saved, ga, want_z, params) -> (dL/dz or None, [dL/dp for p in params])``.

    ``params`` are the tensors given to :func:`pooled_scale` (saved by the autograd node, so
    in-place changes between forward and backward are detected as usual).
    """

    def forward(self, z: torch.Tensor, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def backward(self, saved: Any, ga: torch.Tensor, want_z: bool, params: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        raise NotImplementedError


def se_mlp_forward(z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The SE excitation ``t = σ(W2·relu(W1·z + b1) + b2)`` for ``z`` ``(B, C)`` without autograd:
    ``(t, hidden)``, both needed by :func:`se_mlp_backward`."""
    h = torch.addmm(b1, z, w1.t()).relu_()
    return torch.sigmoid(torch.addmm(b2, h, w2.t())), h


def se_mlp_backward(gt: torch.Tensor, z: torch.Tensor, h: torch.Tensor, t: torch.Tensor, w1: torch.Tensor,
                    w2: torch.Tensor, want_z: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Gradients of :func:`se_mlp_forward` from ``dL/dt`` ``(B, C)``:
    ``(dL/dz or None, [dL/dW1, dL/db1, dL/dW2, dL/db2])``."""
    gl = torch.ops.aten.sigmoid_backward(gt, t)
    gh = torch.ops.aten.threshold_backward(gl @ w2, h, 0)
    gz = gh @ w1 if want_z else None
    return gz, [gh.t() @ z, gh.sum(0), gl.t() @ h, gl.sum(0)]


class SEMlpTiny(ManualTiny):
    """Channel SE's tiny network on ``z`` ``(B, C, 1)`` → ``(B, C, 1)`` (params: ``fc1.weight``,
    ``fc1.bias``, ``fc2.weight``, ``fc2.bias``) with a hand-written backward."""

    def forward(self, z, params):
        z2 = z[..., 0]
        t, h = se_mlp_forward(z2, *params)
        return t.unsqueeze(-1), (z2, h, t)

    def backward(self, saved, ga, want_z, params):
        z2, h, t = saved
        gz, grads = se_mlp_backward(ga[..., 0], z2, h, t, params[0], params[2], want_z)
        return (None if gz is None else gz.unsqueeze(-1)), grads


def _tiny_forward(ctx, fn: Callable[[torch.Tensor], torch.Tensor] | ManualTiny, z: torch.Tensor,
                  params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run the tiny network in a custom node's forward (keeping what its backward needs on
    ``ctx``); returns its detached output."""
    ctx.fn = fn
    if isinstance(fn, ManualTiny):
        with torch.no_grad():
            a, ctx.tiny = fn.forward(z, params)
        return a
    # recorded here (tiny tensors only) so the backward does not have to run it again
    ctx.graph = _record_tiny(fn, z)
    return ctx.graph[1].detach()


def _tiny_grads(ctx, z: torch.Tensor, ga: torch.Tensor, want_z: bool, params: Sequence[torch.Tensor],
                needs: Sequence[bool]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """``(dL/dz or None, parameter gradients)`` of the tiny network run by :func:`_tiny_forward`."""
    if isinstance(ctx.fn, ManualTiny):
        gz, grads = ctx.fn.backward(ctx.tiny, ga, want_z, params)
        return gz, [gp if need else None for gp, need in zip(grads, needs)]
    zz, a = _take_graph(ctx, z)
    return _tiny_backward(zz, a, ga, want_z, params, needs)


class PooledScale(torch.autograd.Function):
    """``y = x * f(mean-pooled x)`` with a two-pass backward (see the module docstring).

    ``apply(x, layout, bshape, f, *params)``: ``layout = (B, C, pre, D, post)`` from
    :func:`slice_layout`, ``bshape`` from :func:`broadcast_shape`; ``f`` maps ``z`` of shape
    ``(B, C, D)`` to ``a`` of the same shape using only ``params`` (module parameters) and
    constants; or ``f`` is a :class:`ManualTiny` (same values, hand-written backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: tuple[int, ...], bshape: list[int],
                fn: Callable[[torch.Tensor], torch.Tensor] | ManualTiny, *params: torch.Tensor) -> torch.Tensor:
        b, c, pre, d, post = layout
        z = pooled_mean(x.reshape(b, c, pre, d, post))
        ctx.layout, ctx.bshape = layout, bshape
        a = _tiny_forward(ctx, fn, z, params)
        ctx.save_for_backward(x, z, a, *params)
        # broadcast against x's own shape so the output (and later the input gradient) is a
        # fresh tensor, not a view (autograd would copy a view when accumulating .grad); `a` is
        # made contiguous because a permuted `a` (einsum output) would make the product's
        # memory layout permuted too
        return x * a.contiguous().view(bshape)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, z, a, *params = ctx.saved_tensors
        b, c, pre, d, post = ctx.layout
        want_x = ctx.needs_input_grad[0]
        # dL/da[b,c,d] = Σ_{pre,post} g·x
        if pre == 1:
            ga = _blocked_dot(g.reshape(b * c * d, 1, post), x.reshape(b * c * d, 1, post)).view(b, c, d)
        else:
            ga = _blocked_dot(g.reshape(b * c, pre, d, post), x.reshape(b * c, pre, d, post)).view(b, c, d)
        gz, out_params = _tiny_grads(ctx, z, ga, want_x, params, ctx.needs_input_grad[4:])
        gx = None
        if want_x:
            gz = torch.zeros_like(z) if gz is None else gz / float(pre * post)
            # input gradient: g·a (the multiply) + dL/dz / n (the mean)
            # the add in place; not torch.addcmul(gz, g, a): with a broadcast `self` it is
            # 4-20x slower on CPU (5.9 ms vs 0.25 ms at 2x32x128x128, benchmarks/attention.py)
            gx = torch.mul(g, a.contiguous().view(ctx.bshape))
            gx.add_(gz.contiguous().view(ctx.bshape))
        return (gx, None, None, None, *out_params)


def pooled_scale(x: torch.Tensor, slice_axis: int | None, fn: Callable[[torch.Tensor], torch.Tensor],
                 params: Sequence[torch.Tensor], manual: ManualTiny | None = None) -> torch.Tensor:
    """``x * fn(per-slice mean of x)`` broadcast over the pooled axes, with the lean
    backward when a gradient is needed and plain ops otherwise (same values). ``manual``:
    the same tiny network with a hand-written backward, used in training instead of ``fn``."""
    layout = slice_layout(x.shape, slice_axis)
    bshape = broadcast_shape(x.shape, slice_axis)
    if use_fused(x, params):
        return PooledScale.apply(x, layout, bshape, fn if manual is None else manual, *params)
    a = fn(pooled_mean(x.reshape(layout)))
    return x * a.contiguous().view(bshape)
