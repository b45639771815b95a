"""Benchmark every attention module against memory-bound and convolution yardsticks.

For each registered module (and ``--sizes``: 3D 1×32×48×48×48, 2D 2×32×128×128) prints the
median forward time (eval, no grad), forward+backward time (train mode, gradient w.r.t. the
input and the parameters, backward from a fixed random gradient) and the peak tensor memory
of forward+backward beyond the inputs (from the profiler's allocation events), next to

* ``x*w``: the memory-bound yardstick, forward+backward of ``x * w`` with ``w`` a learnable
  per-channel weight ``(1, C, 1, …)``;
* ``conv``: one 3×3(×3) convolution ``C → C`` (forward+backward), the cost scale of modules
  built from convolutions;
* ``own_conv``: the module's own convolution layers, each run as a standalone layer
  (forward+backward) on a full-resolution input with its input channels, summed: what the
  textbook form of the module spends in convolutions (attnseg applies some of them to pooled
  or projected tensors instead, e.g. ``pe``'s first 1×1 conv and ``dual``'s query/key/value).

(The compiled CPU kernels these rows used to compare against were removed after the whole-step
benchmarks, benchmarks/whole_step.py: every module now runs its plain PyTorch definition.)

Then PAM against a loop-based reference-style implementation (one ``nn.Linear`` pair per
channel in a Python loop, batch 1, in-place writes, key-slice gathering slice by slice, as
described in seed-models.md §5.3) and the straightforward vectorisation (plain autograd),
at 1×32×48³ and 1×128×48³.

Usage: ``python benchmarks/attention.py [--quick] [--repeats N] [--threads T] [--only NAME,...]
[--clock wall|cpu] [--malloc tuned|default]``. glibc malloc is tuned as in ``attnseg train`` unless
``--malloc default``: with glibc's own thresholds a fresh full-size tensor is often page-faulted in
again, kernel time that depends on the allocation history (the yardstick alone varied 1.3-9.6 ms at
2D between processes here). Times are medians; on a shared machine compare ratios measured in the
same run, or use ``--clock cpu`` (process CPU time, which does not count time spent
preempted by other processes).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from attnseg.attention import ATTENTION, create_attention
from attnseg.attention.slice import key_slice_mask
from attnseg.report.table import print_table

SIZES = {"3D": (1, 32, (48, 48, 48)), "2D": (2, 32, (128, 128))}


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of live tensor bytes allocated while ``fn`` runs (CPU allocation events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    cur = peak = 0
    for _, size in sorted(events):
        cur += size
        peak = max(peak, cur)
    return peak


class Yardstick(nn.Module):
    """``x * w`` with a learnable per-channel ``w``."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(1, channels, *([1] * spatial_dims)) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def make_fns(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[Callable[[], object], Callable[[], object]]:
    """Forward (eval, no grad) and forward+backward (train mode) closures."""
    grad = torch.randn_like(args[0])
    leaves = [a.detach().requires_grad_() for a in args]

    def fwd():
        module.eval()
        with torch.no_grad():
            return module(*args)

    def fwd_bwd():
        module.train()
        module(*leaves).backward(grad)
        # gradients are dropped after (not before) so the peak measurement starts clean
        for p in module.parameters():
            p.grad = None
        for a in leaves:
            a.grad = None

    return fwd, fwd_bwd


# wall clock by default; --clock cpu uses the process CPU time (user + system, all threads),
# which ignores time spent preempted when the machine is shared
CLOCK: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def paired_times(fn: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median times of ``fn`` and ``ref`` measured alternately (so load drift hits both), and
    the median of the per-pair ratios ``fn / ref`` (steadier than the ratio of the medians when
    the machine's speed drifts between pairs)."""
    fn()
    ref()
    a, b = [], []
    for _ in range(repeats):
        for f, out in ((fn, a), (ref, b)):
            t0 = _clock()
            f()
            out.append(_clock() - t0)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


def measure(module: nn.Module, args: tuple[torch.Tensor, ...], yard: nn.Module, repeats: int) -> dict:
    """Times and peak memory of ``module`` and the ratios to ``yard`` (measured alternately)."""
    fwd, fb = make_fns(module, args)
    yfwd, yfb = make_fns(yard, args[:1])
    t_f, y_f, r_f = paired_times(fwd, yfwd, repeats)
    t_fb, y_fb, r_fb = paired_times(fb, yfb, repeats)
    mem, ymem = peak_bytes(fb), peak_bytes(yfb)
    return {"fwd_s": t_f, "fwdbwd_s": t_fb, "peak_mb": mem / 2**20, "fwd_x": r_f, "fwdbwd_x": r_fb,
            "mem_x": mem / ymem, "yard_fwdbwd_s": y_fb}


# non-default settings with their own rows (label → registered name, keyword arguments,
# environment variables)
VARIANTS = {
    "scse (combine=max)": ("scse", {"combine": "max"}, {}),
}


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """Set environment variables for the duration of the block (restored after)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build(name: str, channels: int, dims: int, size: tuple[int, ...], **extra) -> tuple[nn.Module, bool]:
    entry = ATTENTION.get(name)
    kw = dict(extra)
    if "spatial_size" in inspect.signature(entry.fn).parameters:
        kw["spatial_size"] = size
    if entry.tags.get("gated"):
        kw["gate_channels"] = 2 * channels
    return create_attention(name, channels, dims, **kw), bool(entry.tags.get("gated"))


def own_conv_seconds(module: nn.Module, batch: int, size: tuple[int, ...], repeats: int) -> float | None:
    """Summed median fwd+bwd time of the module's convolution layers, each standalone on a
    full-resolution ``(batch, in_channels, *size)`` input; ``None`` if it has none."""
    # convolutions over the image axes only (1-D convs over pooled descriptors, e.g. ECA's, are tiny)
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd) and len(m.kernel_size) == len(size)]
    if not convs:
        return None
    total = 0.0
    for c in convs:
        x = torch.randn(batch, c.in_channels, *size, requires_grad=True)
        with torch.no_grad():
            g = torch.randn_like(c(x))

        def fb(c: nn.Module = c, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            c(x).backward(g)
            x.grad = None
            for p in c.parameters():
                p.grad = None

        fb()
        ts = []
        for _ in range(repeats):
            t0 = _clock()
            fb()
            ts.append(_clock() - t0)
        total += statistics.median(ts)
    return total


def module_table(names: list[str], repeats: int) -> None:
    for label, (b, c, size) in SIZES.items():
        dims = len(size)
        x = torch.randn(b, c, *size)
        yard = Yardstick(c, dims)
        conv_cls = nn.Conv3d if dims == 3 else nn.Conv2d
        conv = conv_cls(c, c, 3, padding=1)
        base = measure(yard, (x,), yard, repeats)
        conv_r = measure(conv, (x,), yard, repeats)
        rows = [{"module": "x*w (yardstick)", **base}, {"module": "conv3 C→C", **conv_r, "vs_conv": 1.0}]
        rows_to_run = [(n, n, {}, {}) for n in names]
        rows_to_run += [(label, base, kw, env) for label, (base, kw, env) in VARIANTS.items() if base in names]
        for name, base, extra, env in rows_to_run:
            torch.manual_seed(0)
            m, gated = build(base, c, dims, size, **extra)
            args = (x, torch.randn(b, 2 * c, *[s // 2 for s in size])) if gated else (x,)
            with environment(env):
                r = measure(m, args, yard, repeats)
            # fwd+bwd relative to one 3x3 conv measured in the same run (a conv-sized cost is not
            # comparable through the tiny yardstick: cache and page-fault effects differ)
            r["vs_conv"] = r["fwdbwd_s"] / conv_r["fwdbwd_s"]
            own = own_conv_seconds(m, b, size, repeats)
            r["own_conv_s"] = "-" if own is None else own
            r["vs_own_conv"] = "-" if own is None else r["fwdbwd_s"] / own
            rows.append({"module": name, **r})
            print(f"  {label} {name}: fwd+bwd {r['fwdbwd_s'] * 1e3:.1f} ms ({r['fwdbwd_x']:.2f}x yardstick)",
                  file=sys.stderr)
        print_table(rows, ["module", "fwd_s", "fwdbwd_s", "peak_mb", "fwd_x", "fwdbwd_x", "mem_x", "vs_conv",
                           "own_conv_s", "vs_own_conv"],
                    title=f"{label} {b}x{c}x{'x'.join(map(str, size))}: times in s, peak MB beyond inputs; "
                          f"_x = median of per-pair ratios to x*w (measured alternately), vs_conv = fwd+bwd "
                          f"ratio to one 3x3 conv, vs_own_conv = fwd+bwd ratio to the module's own conv layers at "
                          f"full resolution")


# ----------------------------------------------------------------------------------------
# PAM: loop-based reference-style implementation (batch 1), written from the description


class LoopPAM(nn.Module):
    """Reference-style PAM: per-channel Linear pairs looped in Python, in-place writes,
    key slices gathered slice by slice; batch size 1, fixed depth, avg pooling."""

    def __init__(self, channels: int, depth: int, h: int = 16, ch: int = 8) -> None:
        super().__init__()
        dh = depth // h
        self.slice_fc = nn.ModuleList(nn.Sequential(nn.Linear(depth, dh), nn.ReLU(), nn.Linear(dh, depth))
                                      for _ in range(channels))
        r = min(ch, channels)
        self.fc = nn.Sequential(nn.Linear(channels, channels // r), nn.ReLU(), nn.Linear(channels // r, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, d = x.shape[1], x.shape[2]
        x = x.clone()
        masks = []
        for i, fc in enumerate(self.slice_fc):
            slab = x[:, i].clone()
            s = torch.sigmoid(fc(slab.mean((2, 3))))  # (1, D)
            with torch.no_grad():
                p = torch.softmax(s.view(d), 0)
                masks.append(p >= p.mean())
            x[:, i] = slab * s.view(1, d, 1, 1)
        desc = x.mean((2, 3, 4)).clone()
        with torch.no_grad():
            for i in range(c):
                desc[:, i] = torch.stack([x[0, i, j] for j in range(d) if masks[i][j]]).mean()
        t = torch.sigmoid(self.fc(desc.detach()))
        return x * t.view(1, c, 1, 1, 1)


class PlainPAM(nn.Module):
    """Straightforward vectorisation: batched einsum FC, masks, descriptor, plain autograd."""

    def __init__(self, pam: nn.Module) -> None:
        super().__init__()
        self.pam = pam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.pam.slice.weights(x.mean((3, 4)))
        y = x * s[..., None, None]
        mask = key_slice_mask(s).to(x.dtype)
        u = ((y.mean((3, 4)) * mask).sum(-1) / mask.sum(-1)).detach()
        t = torch.sigmoid(self.pam.channel.fc2(torch.relu(self.pam.channel.fc1(u))))
        return y * t[..., None, None, None]


def pam_table(repeats: int, channel_list: tuple[int, ...]) -> None:
    rows = []
    for c in channel_list:
        size = (48, 48, 48)
        x = torch.randn(1, c, *size)
        yard = Yardstick(c, 3)
        ours = create_attention("pam", c, 3, spatial_size=size)
        variants = {"x*w (yardstick)": yard, "loop reference-style": LoopPAM(c, size[0]),
                    "plain vectorised": PlainPAM(ours), "attnseg pam": ours}
        res = {k: measure(m, (x,), yard, repeats) for k, m in variants.items()}
        loop = res["loop reference-style"]
        for k, r in res.items():
            # speed-ups through the paired yardstick ratios (robust to load drift between rows)
            rows.append({"channels": c, "impl": k, **r, "speedup_fwd": loop["fwd_x"] / r["fwd_x"],
                         "speedup_fwdbwd": loop["fwdbwd_x"] / r["fwdbwd_x"]})
    print_table(rows, ["channels", "impl", "fwd_s", "fwdbwd_s", "peak_mb", "fwd_x", "fwdbwd_x", "mem_x",
                       "speedup_fwd", "speedup_fwdbwd"],
                title="PAM at 1xCx48x48x48: _x = median per-pair ratio to x*w (alternating runs); speed-up over "
                      "the loop-based reference-style implementation")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, PAM comparison at 32 channels only")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated module names (default: all)")
    p.add_argument("--skip-modules", action="store_true", help="only the PAM comparison")
    p.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                   help="wall time (default) or process CPU time (robust on a shared machine)")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tuned (default): glibc malloc keeps freed blocks, as `attnseg train`/`predict` set it "
                        "(attnseg.infer.fastpath.tune_malloc); default: glibc's own thresholds, under which "
                        "every fresh full-size tensor may be page-faulted in again (kernel time that varies "
                        "with the allocation history and hits modules and yardstick unevenly)")
    args = p.parse_args(argv)
    global _clock
    _clock = CLOCK[args.clock]
    malloc = "default"
    if args.malloc == "tuned":
        from attnseg.infer.fastpath import tune_malloc

        malloc = "tuned" if tune_malloc() else "default (mallopt unavailable)"
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    names = [e.name for e in ATTENTION.entries() if e.tags.get("plugin_test", True)]
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"unknown modules {unknown}; choose from {names}")
        names = wanted
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {repeats}, {args.clock} clock, "
          f"malloc {malloc}")
    if not args.skip_modules:
        module_table(names, repeats)
    pam_table(repeats, (32,) if args.quick else (32, 128))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
