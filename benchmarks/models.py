"""Speed, memory and FLOPs of every registered model at its default configuration.

For each model (iterating the registry, so models added later are included) a fresh Python
subprocess builds it, then measures on a random input:

* ``fwd_s``: eval-mode forward under ``torch.no_grad`` (median of ``--repeat`` runs after a warm-up);
* ``fwd_bwd_s``: training-mode forward + backward of the sum of all outputs (median);
* ``GFLOP``: forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (a
  multiply-add counts 2), and ``GFLOP/s`` of the forward and of forward + backward;
* ``peak_fwd_MiB`` / ``peak_train_MiB``: peak resident memory of the subprocess
  (``ru_maxrss``) above its level after building the model and the input, after the forward
  runs and after the training runs (CPU; ``ru_maxrss`` only grows, so the training figure
  includes the forward one).

Input: ``1 x C x S³`` for models that support 3D (``S = --size``, default 64), ``1 x C x (4S)²``
for 2D-only models; ``C`` is the model's default ``in_channels``. A registry tag
``bench_input`` (full shape) overrides this for models that need a particular size.

    python benchmarks/models.py                 # all models, 64³, 3 repeats
    python benchmarks/models.py --quick         # 32³, 1 repeat
    python benchmarks/models.py 'panet*' --size 64 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def input_shape(name: str, size: int) -> tuple[int, ...]:
    from attnseg.models import MODELS

    entry = MODELS.get(name)
    if entry.tags.get("bench_input") is not None:
        return tuple(entry.tags["bench_input"])
    c = int(entry.defaults.get("in_channels", 1))
    dims = int(entry.defaults.get("spatial_dims", 3 if 3 in entry.dims else 2))
    return (1, c, *([size] * 3)) if dims == 3 else (1, c, size * 4, size * 4)


def _loss(y):  # -> torch.Tensor (imported lazily)
    if isinstance(y, dict):
        return sum(v.float().sum() for v in y.values())
    if isinstance(y, (list, tuple)):
        return sum(v.float().sum() for v in y)
    return y.float().sum()


def measure_one(name: str, size: int, repeat: int, threads: int) -> dict:
    """Measurements for one model in this process (call in a fresh subprocess)."""
    import resource
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnseg.models import count_parameters, create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from attnseg.models import MODELS

    # AMIS presets bind slice attention to a slice count (reference: 144); bind it to this input
    kwargs = {"depth": size} if MODELS.get(name).tags.get("preset_of") else {}
    model = create_model(name, **kwargs)
    shape = input_shape(name, size)
    x = torch.randn(shape)

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    base = rss_mib()
    model.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model(x)
        fwd_flops = fc.get_total_flops()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    fwd = statistics.median(times)
    peak_fwd = rss_mib() - base

    model.train()
    with FlopCounterMode(display=False) as fc:
        _loss(model(x)).backward()
    train_flops = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        _loss(model(x)).backward()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    fb = statistics.median(times)
    return {"model": name, "input": "x".join(map(str, shape)), "params": count_parameters(model),
            "fwd_s": fwd, "fwd_bwd_s": fb, "GFLOP": fwd_flops / 1e9,
            "fwd_GFLOP/s": fwd_flops / 1e9 / fwd, "train_GFLOP/s": train_flops / 1e9 / fb,
            "peak_fwd_MiB": peak_fwd, "peak_train_MiB": rss_mib() - base}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter on model names")
    p.add_argument("--size", type=int, default=64, help="edge length S of the 3D input S³ (2D: 4S)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--quick", action="store_true", help="--size 32 --repeat 1")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # subprocess mode
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeat = 32, 1
    if args.one:
        print(json.dumps(measure_one(args.one, args.size, args.repeat, args.threads)))
        return 0

    from attnseg.models import list_models
    from attnseg.report.table import markdown_table, print_table

    rows = []
    for name in list_models(args.pattern):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--size", str(args.size),
               "--repeat", str(args.repeat), "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append({"model": name, "note": err[:100]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            rows.append({"model": name, "note": f"timeout after {args.timeout:.0f}s"})
        print(f"  {name}: done", file=sys.stderr, flush=True)
    cols = ["model", "input", "params", "fwd_s", "fwd_bwd_s", "GFLOP", "fwd_GFLOP/s", "train_GFLOP/s",
            "peak_fwd_MiB", "peak_train_MiB", "note"]
    title = f"models: CPU, {args.threads} threads, median of {args.repeat}"
    if args.markdown:
        print(markdown_table(rows, cols))
    else:
        print_table(rows, cols, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
