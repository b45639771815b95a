"""``torch.compile`` for prediction: the first call's cost and the steady-state speed-up (CPU).

One volume is predicted window by window (Gaussian blending, overlap 0.5) the two ways
``attnseg predict`` can:

* ``eager``: the CPU fast path (``enable_cpu_fastpaths()`` + ``prepare_model``: oneDNN
  convolutions, in-place instance norm), what ``attnseg predict`` does by default;
* ``compiled``: ``attnseg predict --compile`` — the plain modules through ``torch.compile``
  (inductor, ``dynamic=False``, freezing), compiled on the first window and reused after.

The first compiled prediction (compilation included) is timed on its own; then the two run
alternately (``--rounds``) and the paired ratio eager / compiled is reported (min / median /
max), with the max |difference| of the logits. The training side of ``torch.compile`` (first
step and steady step of a whole training iteration) is in ``benchmarks/whole_step.py --modes
layer plain compile``.

    python benchmarks/compile.py                 # registered unet, 1x4x128x128x96, ROI 64
    python benchmarks/compile.py --quick         # 1x4x64x64x48, ROI 32, features 8-16-32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from attnseg.infer.fastpath import enable_cpu_fastpaths, prepare_model
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.models import create_model
from attnseg.report.table import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 128, 96])
    ap.add_argument("--roi", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="bold title (the table is Markdown either way)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.features, a.shape, a.roi, a.rounds = [8, 16, 32], [64, 64, 48], 32, 2
    torch.set_num_threads(a.threads)
    enable_cpu_fastpaths()
    torch.manual_seed(0)
    plain = create_model(a.model, spatial_dims=3, in_channels=4, out_channels=4, features=tuple(a.features)).eval()
    fast = prepare_model(copy.deepcopy(plain), 3, channels_last=False)
    x = torch.randn(1, 4, *a.shape, generator=torch.Generator().manual_seed(1))
    messages: list[str] = []
    eager = SlidingWindowInferer(a.roi, overlap=0.5, blend="gaussian")
    compiled = SlidingWindowInferer(a.roi, overlap=0.5, blend="gaussian", compile=True, log=messages.append)
    out: dict[str, torch.Tensor] = {}

    def timed(name: str, inferer: SlidingWindowInferer, net: torch.nn.Module) -> float:
        t0 = time.perf_counter()
        out[name] = inferer(x, net)
        return time.perf_counter() - t0

    first = timed("compiled", compiled, plain)
    compile_s = sum(compiled.compile_seconds.values())
    # warm-up of both (oneDNN primitives, allocator; the compiled windows' first runs after compiling)
    timed("eager", eager, fast)
    timed("compiled", compiled, plain)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(a.rounds):
        pair = [("eager", eager, fast), ("compiled", compiled, plain)]
        for name, inf, net in (pair if r % 2 == 0 else pair[::-1]):
            times[name].append(timed(name, inf, net))
    ratios = sorted(e / c for e, c in zip(times["eager"], times["compiled"]))
    windows = len(eager.plan(a.shape)[3])

    def mmm(v: list[float], fmt: str = "{:.2f}") -> str:
        return " / ".join(fmt.format(t) for t in (min(v), statistics.median(v), max(v)))

    row = {"model": f"{a.model} {'-'.join(map(str, a.features))}",
           "case": f"1x4x{'x'.join(map(str, a.shape))}, ROI {a.roi}, {windows} windows",
           "first compiled case s (compile incl.)": f"{first:.1f}",
           "first window s": f"{compile_s:.1f}",
           "eager case s (min/med/max)": mmm(times["eager"]),
           "compiled case s (min/med/max)": mmm(times["compiled"]),
           "eager / compiled paired (min/med/max)": mmm(ratios),
           "max |logit diff|": f"{(out['eager'] - out['compiled']).abs().max().item():.1e}"}
    title = (f"torch.compile (inductor, freezing) vs eager fast path, prediction, fp32, {a.threads} threads, "
             f"torch {torch.__version__}")
    print(f"{'**' + title + '**' if a.markdown else title}\n\n{markdown_table([row], list(row))}\n")


if __name__ == "__main__":
    main()
