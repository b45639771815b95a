"""Does the speed-up layer pay in a whole training iteration? One row per compiled kernel /
hand-written backward of ``attnseg.attention``: a U-Net with that module at every encoder and
decoder level, one training iteration (forward + Dice-CE loss + backward + Adam step; no data
loader) at 1×4×64³ (3D) and 2×4×128² (2D), in these modes:

* ``layer``   — the defaults: the speed-up layer (``attention/_accel/``);
* ``numba0``  — ``ATTNSEG_NUMBA=0``: switched the numba kernels off while they existed;
* ``plain``   — ``ATTNSEG_NUMBA=0 ATTNSEG_FUSED=0``: plain autograd (``ATTNSEG_FUSED`` switched the
  fused nodes off while they existed);
* ``compile`` — ``torch.compile`` (inductor, ``dynamic=False``) of the plain modules; its first
  step (the compilation) is reported separately and not timed.

Since every kernel and node failed the rule below and was removed (docs/benchmarks.md), the
first three modes run the same code and differ by noise only: the rows stay to re-check a
future faster path the same way.

Every mode runs in its own worker process (the environment switches are read at call time but
the process-wide oneDNN / allocator state should not leak), with oneDNN convolutions
(``prepare_model``) on channels-first tensors; ``--layout cl`` uses the trainer's channels-last
fast path instead. Rounds alternate the modes: each round every worker times ``--steps`` steps;
times are thread CPU seconds at one thread (``--clock cpu``, the steadier clock on a shared
machine) or wall seconds. Ratios are per round (paired), reported as min / median / max.

Decision (issue 14): a kernel stays if its mode's median step is >= 10 % faster than the best
of the other modes that would replace it: for the numba
kernels (``layer`` vs best(``numba0``, ``plain``, ``compile``): removing them may also remove the node),
``numba0`` vs best(``plain``, ``compile``) for the hand-written backward.

    python benchmarks/whole_step.py                       # every module, both shapes, 3 rounds
    python benchmarks/whole_step.py --modules scse pam --shapes 3d --no-compile --rounds 2
    python benchmarks/whole_step.py --markdown            # Markdown tables (run_all.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# module -> (attention kwargs, which layers it has: "numba" kernels and/or a "fused" backward)
MODULES: dict[str, tuple[dict, tuple[str, ...]]] = {
    # removed 2026-12-03 (whole step < 10 % faster, docs/benchmarks.md): the numba kernels and the
    # fused pooled-scale node of cse/pam/pam-adaptive/slice/ksca, scSE/sSE's node and kernels,
    # CBAM's node and kernels, stn's kernels; the rows stay to re-check (all modes now run the same
    # plain ops, so layer / numba0 / plain differ by noise only)
    "cse": ({}, ()),
    "sse": ({}, ()),
    "scse": ({}, ()),
    "cbam": ({}, ()),
    "pam": ({}, ()),
    "pam-adaptive": ({}, ()),
    "slice": ({}, ()),
    "ksca": ({}, ()),
    "stn": ({}, ()),  # 3D trilinear kernels removed (+9 %), the 2D bilinear backward later (+5 % / +3 %)
    "dual": ({}, ()),  # Gram node removed
}
SHAPES = {"3d": (1, 4, (64, 64, 64)), "2d": (2, 4, (128, 128))}
MODES = ("layer", "numba0", "plain", "compile")
ENV = {"layer": {}, "numba0": {"ATTNSEG_NUMBA": "0"}, "plain": {"ATTNSEG_NUMBA": "0", "ATTNSEG_FUSED": "0"},
       "compile": {"ATTNSEG_NUMBA": "0", "ATTNSEG_FUSED": "0"}}
FEATURES = (16, 32, 64)


def _worker(mode: str, module: str, shape: str, threads: int, clock: str, layout: str) -> None:
    """Build the model once, then answer ``steps N`` lines with a JSON list of step times."""
    import torch

    torch.set_num_threads(threads)
    from attnseg.infer import fastpath
    from attnseg.models import create_model
    from attnseg.train.losses import build_training_loss

    fastpath.enable_cpu_fastpaths()
    batch, chans, size = SHAPES[shape]
    nd = len(size)
    torch.manual_seed(0)
    kw, _ = MODULES[module]
    model = create_model("unet", spatial_dims=nd, in_channels=chans, out_channels=4, features=FEATURES,
                         attention=module, attention_kwargs=dict(kw), attention_at=("encoder", "decoder"),
                         input_size=size).train()
    x = torch.randn(batch, chans, *size)
    lab = torch.randint(0, 4, (batch, *size))
    if mode != "compile":
        fastpath.prepare_model(model, nd, channels_last=layout == "cl")
        if layout == "cl":
            x = fastpath.prepare_input(x)
    net = torch.compile(model, dynamic=False) if mode == "compile" else model
    crit = build_training_loss({"name": "dice_ce"}, "classes")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tick = time.thread_time if clock == "cpu" else time.perf_counter

    def step() -> float:
        t0 = tick()
        out = net(x)
        loss, _ = crit(out if isinstance(out, dict) else {"out": out}, lab, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return tick() - t0

    t0 = time.perf_counter()
    step()  # warm-up (compilation, oneDNN primitives, allocator growth)
    first = time.perf_counter() - t0
    print(json.dumps({"ready": True, "first_s": first}), flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        print(json.dumps([step() for _ in range(n)]), flush=True)


def _start(mode: str, module: str, shape: str, args: argparse.Namespace) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, **ENV[mode], "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.Popen([sys.executable, __file__, "--worker", mode, "--modules", module, "--shapes", shape,
                          "--threads", str(args.threads), "--clock", args.clock, "--layout", args.layout],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {mode}/{module}/{shape} failed")
    return p, float(json.loads(line)["first_s"])


def _run(p: subprocess.Popen, n: int) -> list[float]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"steps {n}\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def _decide(med: dict[str, float], have: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(layer, verdict, deciding figure) for each layer the module has."""
    out = []
    # the numba kernels against everything that could replace them (the fused node without them,
    # plain autograd, torch.compile); the hand-written backward against plain autograd and compile
    for layer, mine, others in (("numba", "layer", ("numba0", "plain", "compile")),
                                ("fused", "numba0", ("plain", "compile"))):
        if layer not in have or mine not in med:
            continue
        rivals = {o: med[o] for o in others if o in med}
        if not rivals:
            continue
        best = min(rivals, key=rivals.get)
        gain = rivals[best] / med[mine] - 1.0
        out.append((layer, "keep" if gain >= 0.10 else "remove",
                    f"{mine} {_fmt(med[mine])} s vs {best} {_fmt(rivals[best])} s: {gain * 100:+.0f} %"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile mode (minutes per row)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--layout", choices=["cf", "cl"], default="cf",
                    help="cf: channels-first activations (the numba kernels apply); cl: the trainer's channels-last")
    ap.add_argument("--markdown", action="store_true", help="bold titles (the tables are Markdown either way)")
    ap.add_argument("--quick", action="store_true", help="scse and pam, 3D, no compile, 2 rounds")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.modules[0], args.shapes[0], args.threads, args.clock, args.layout)
        return
    if args.quick:
        args.modules, args.shapes, args.no_compile, args.rounds = ["scse", "pam"], ["3d"], True, 2
    modes = [m for m in args.modes if not (m == "compile" and args.no_compile)]
    rows, verdicts, firsts = [], [], []
    for module in args.modules:
        for shape in args.shapes:
            workers = {m: _start(m, module, shape, args) for m in modes}
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.rounds):
                order = modes if r % 2 == 0 else modes[::-1]  # alternate, and alternate the order
                for m in order:
                    times[m].append(statistics.median(_run(workers[m][0], args.steps)))
            for p, _ in workers.values():
                p.stdin.close()
                p.wait()
            med = {m: statistics.median(t) for m, t in times.items()}
            b, c, size = SHAPES[shape]
            row = {"module": module, "input": f"{b}x{c}x{'x'.join(map(str, size))}"}
            for m in modes:
                row[f"{m} s"] = _fmt(med[m])
            ref = "plain" if "plain" in modes else modes[-1]
            for m in modes:
                if m != ref:
                    ratios = sorted(tr / tm for tr, tm in zip(times[ref], times[m]))
                    row[f"{ref}/{m} (min/med/max)"] = " / ".join(f"{v:.2f}" for v in
                                                                 (ratios[0], statistics.median(ratios), ratios[-1]))
            rows.append(row)
            if "compile" in workers:
                firsts.append({"module": module, "input": row["input"],
                               "compile first step s": f"{workers['compile'][1]:.1f}",
                               "compile steady s": _fmt(med["compile"]),
                               "eager (layer) s": _fmt(med.get("layer", float("nan"))),
                               "eager/compiled": f"{med.get('layer', float('nan')) / med['compile']:.2f}x"})
            for layer, verdict, fig in _decide(med, MODULES[module][1]):
                verdicts.append({"module": module, "input": row["input"], "layer": layer, "verdict": verdict,
                                 "deciding figure": fig})
            print(f"# {module} {shape}: " + ", ".join(f"{m} {_fmt(v)}" for m, v in med.items()), file=sys.stderr,
                  flush=True)
    from attnseg.report.table import markdown_table

    clock = "thread CPU s" if args.clock == "cpu" else "wall s"
    title = (f"whole training step (U-Net {FEATURES} + module at encoder and decoder, Dice-CE, Adam), "
             f"{args.threads} thread(s), {clock}, median of {args.rounds} alternating rounds x {args.steps} steps, "
             f"layout {args.layout}")
    tables = [(title, rows),
              ("kept / removed (>= 10 % faster whole step than the best alternative)", verdicts),
              ("torch.compile: first step (compilation) and steady state", firsts)]
    for t, rs in tables:
        if rs:
            print(f"{'**' + t + '**' if args.markdown else t}\n\n{markdown_table(rs, list(rs[0]))}\n", flush=True)


if __name__ == "__main__":
    main()
