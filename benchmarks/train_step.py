"""One training iteration (forward + PANet loss + backward + Adam step) on CPU: plain PyTorch vs
attnseg's CPU fast paths, fp32 and bf16 autocast.

    python benchmarks/train_step.py                 # panet-brats, 1x4x64x64x64, 5 timed steps
    python benchmarks/train_step.py --size 48 --repeats 3 --model panet-brats

Modes (each in a fresh subprocess, so that process-wide allocator settings do not leak):

* ``plain-fp32``: the model as built, contiguous tensors, default glibc malloc;
* ``fast-fp32``: ``attnseg.infer.fastpath`` — oneDNN for every conv, channels_last_3d weights
  and inputs, malloc tuned (no mmap for large blocks, no heap trimming);
* ``fast-bf16``: the same under ``torch.autocast("cpu", torch.bfloat16)``.

Prints the median step time of each mode and the speed-up over plain fp32. Rounds alternate
the modes (``--rounds``) so that load changes on a shared machine hit every mode alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODES = ("plain-fp32", "fast-fp32", "fast-bf16")


def _worker(mode: str, model_name: str, size: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    fast = mode.startswith("fast")
    if fast:
        from attnseg.infer import fastpath

        fastpath.enable_cpu_fastpaths()
    from attnseg.models import create_model
    from attnseg.train.data import region_target
    from attnseg.train.losses import build_training_loss

    torch.manual_seed(0)
    model = create_model(model_name).train()
    if fast:
        fastpath.prepare_model(model, 3)
    loss_fn = build_training_loss({"name": "dice_ce", "kwargs": {"squared": True, "ce": "argmax"},
                                   "deep_supervision": {"enabled": True}, "prior": {"enabled": "auto"}},
                                  "brats-regions")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(1, 4, size, size, size)
    lab = torch.randint(0, 4, (1, size, size, size))
    if fast:
        x = fastpath.prepare_input(x)
    target = region_target(lab, 4)
    wt = (lab > 0).float().unsqueeze(1)
    amp = mode.endswith("bf16")

    def step() -> float:
        t0 = time.perf_counter()
        if amp:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
        else:
            out = model(x)
        loss, _ = loss_fn(out, target, wt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up: oneDNN primitive creation, allocator growth
    times = [step() for _ in range(repeats)]
    return {"mode": mode, "times": times, "native_bf16": fastpath.onednn_bf16_supported() if fast else None}


def _check_emulated(mode: str, model_name: str, threads: int) -> dict:
    """One step of ``mode`` (bf16) and of fp32 at 16³ from the same weights: the losses must agree
    to bf16's precision (where bf16 is emulated the speed is not measured, the output still is)."""
    import torch

    from attnseg.infer import fastpath
    from attnseg.models import create_model
    from attnseg.train.data import region_target
    from attnseg.train.losses import build_training_loss

    torch.set_num_threads(threads)
    losses = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = fastpath.prepare_model(create_model(model_name).train(), 3)
        loss_fn = build_training_loss({"name": "dice_ce", "deep_supervision": {"enabled": True},
                                       "prior": {"enabled": "auto"}}, "brats-regions")
        torch.manual_seed(1)
        x = fastpath.prepare_input(torch.randn(1, 4, 16, 16, 16))
        lab = torch.randint(0, 4, (1, 16, 16, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss, _ = loss_fn(out, region_target(lab, 4), (lab > 0).float().unsqueeze(1))
        loss.backward()
        ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        losses.append((loss.item(), ok))
    (l32, _), (l16, ok16) = losses
    rel = abs(l16 - l32) / max(abs(l32), 1e-12)
    verdict = "ok" if ok16 and rel < 1e-2 else "FAILED"
    return {"mode": mode, "check": f"output check at 1x4x16^3: loss {l16:.4f} vs fp32 {l32:.4f} "
                                   f"(rel. {rel:.1e}), finite gradients: {ok16} -> {verdict}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="panet-brats")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds over the modes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--force-bf16", action="store_true", help="run fast-bf16 even where bf16 is emulated")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.size, args.repeats, args.threads)))
        return
    from attnseg.infer.fastpath import onednn_bf16_supported

    emulated = [m for m in args.modes if m.endswith("bf16")] if not (args.force_bf16 or onednn_bf16_supported()) \
        else []
    args.modes = [m for m in args.modes if m not in emulated]
    checks = [_check_emulated(m, args.model, args.threads) for m in emulated]
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    native = None
    for _ in range(args.rounds):
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--size", str(args.size),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            times[mode] += res["times"]
            native = res["native_bf16"] if res["native_bf16"] is not None else native
    base_times = times[args.modes[0]]
    base = statistics.median(base_times)
    rows = []
    for m, t in times.items():
        # step i of the reference mode over step i of this mode (same round, same position)
        ratios = [b / x for b, x in zip(base_times, t)]
        rows.append({"mode": m, "median s/step": f"{statistics.median(t):.3f}", "min s": f"{min(t):.3f}",
                     f"speed-up vs {args.modes[0]}": f"{base / statistics.median(t):.2f}x",
                     "paired min/median/max": " / ".join(f"{r:.2f}" for r in
                                                          (min(ratios), statistics.median(ratios), max(ratios))),
                     "steps": len(t)})
    for c in checks:  # a row never disappears: emulated bf16 is checked at a small size instead of timed
        rows.append({"mode": c["mode"], "median s/step": "emulated, speed not measured", "min s": "",
                     f"speed-up vs {args.modes[0]}": "", "paired min/median/max": c["check"], "steps": 1})
    from attnseg.report.table import print_table

    print_table(rows, ["mode", "median s/step", "min s", f"speed-up vs {args.modes[0]}", "paired min/median/max",
                       "steps"],
                title=f"train step: {args.model}, 1x4x{args.size}^3, {args.threads} threads, "
                      f"native oneDNN bf16: {native}")


if __name__ == "__main__":
    main()
