"""GPU smoke test of issue #21: one OK/FAIL line per item, under 5 minutes on one GPU.

    python benchmarks/gpu_smoke.py            # every line; GPU lines need CUDA
    python benchmarks/gpu_smoke.py --quick    # smaller sizes (what run_all --quick uses)

Lines marked [gpu] need CUDA; on a machine without it each of them prints ``UNMEASURED`` and
the script still runs the [cpu] lines (the same checks on the CPU where they make sense) and
exits 0. With CUDA every line runs; the exit status is 1 when any line FAILs. Timings (ms) are
medians of a few repeats after a warm-up; they describe this machine only.

Items: attention modules × {fp32, fp16, bf16} forward + backward (incl. the fused/compiled
backwards under autocast), DANet at 64³ in fp16, the STN grid under autocast, device mapping
and backend strings, the metric reduction on the backend's device (nccl where available),
RNG state per device, the trainer (validation, auto precision, fp16 + GradScaler), resume,
sliding-window stitching on the GPU vs the CPU, cuDNN benchmark vs deterministic, the
``panet-brats`` training step in fp16 vs fp32 at 1×4×128³, and a 2-process ``torchrun`` run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RESULTS: list[tuple[str, str, str]] = []


def line(name: str, gpu: bool, fn: Callable[[], str]) -> None:
    """Run one check; print ``OK|FAIL|UNMEASURED  name  detail``."""
    tag = "[gpu]" if gpu else "[cpu]"
    if gpu and not torch.cuda.is_available():
        status, detail = "UNMEASURED", "no CUDA device on this machine"
    else:
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            status = "OK"
        except Exception as exc:  # a smoke test reports every failure and goes on
            status, detail = "FAIL", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            if os.environ.get("ATTNSEG_SMOKE_TRACE"):
                traceback.print_exc()
        detail = f"{detail} ({time.perf_counter() - t0:.1f} s)".strip()
    RESULTS.append((status, f"{tag} {name}", detail))
    print(f"{status:10s} {tag} {name:58s} {detail}", flush=True)


def _timed(fn: Callable[[], object], repeats: int = 5, device: torch.device | None = None) -> float:
    """Median wall time in ms of ``fn`` after one warm-up (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _gpu() -> torch.device:
    return torch.device("cuda:0")


# ----------------------------------------------------------------------------------------------
# attention modules


def attention_modules(device: torch.device, dtype: torch.dtype | None, size: int) -> str:
    """Every registered attention module (as tests/attention builds them), 3D, forward +
    backward under autocast ``dtype``: finite outputs and gradients, output within a
    precision-dependent tolerance of fp32."""
    import inspect

    from attnseg.attention import ATTENTION, create_attention

    tol = {None: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1.5e-1}[dtype]
    bad = []
    entries = [e for e in ATTENTION.entries() if e.tags.get("plugin_test", True)]
    sp = (size, size + 2, size - 2)
    for e in entries:
        torch.manual_seed(0)
        try:
            params = inspect.signature(e.fn).parameters
            kw = {"spatial_size": sp} if "spatial_size" in params else {}
            m = create_attention(e.name, 16, 3, **kw).to(device)
            with torch.no_grad():  # residual gates start at 0: give every zero parameter a value
                for p in m.parameters():
                    if p.numel() and not p.abs().sum():
                        p.normal_(0, 0.1)
            x = torch.randn(2, 16, *sp, device=device, requires_grad=True)
            args = [x]
            if e.tags.get("gated"):
                args.append(torch.randn(2, 16, *[(s + 1) // 2 for s in sp], device=device))
            with torch.no_grad():
                ref = m(*args).float()
            ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else \
                torch.autocast(device.type, enabled=False)
            with ctx:
                y = m(*args)
            y.float().square().mean().backward()
            grads = [x.grad] + [p.grad for p in m.parameters() if p.grad is not None]
            err = float((y.detach().float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
            if not torch.isfinite(y).all() or not all(torch.isfinite(g).all() for g in grads):
                bad.append(f"{e.name}: non-finite")
            elif err > tol:
                bad.append(f"{e.name}: rel. error {err:.2g} > {tol:g}")
        except Exception as exc:
            bad.append(f"{e.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    if bad:
        raise AssertionError(f"{len(bad)}/{len(entries)} failed: " + "; ".join(bad))
    return f"{len(entries)} modules at 2x16x{sp}"


def danet_fp16_64(device: torch.device) -> str:
    from attnseg.attention.dual import DualAttention

    torch.manual_seed(0)
    m = DualAttention(4, 3).to(device)
    with torch.no_grad():
        m.channel.gamma.fill_(0.1)
    x = torch.randn(1, 4, 64, 64, 64, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=torch.float16):
        y = m(x)
    y.float().square().mean().backward()
    if not (torch.isfinite(y).all() and torch.isfinite(x.grad).all()):
        raise AssertionError("non-finite output or gradient")
    return "finite output and gradients at 1x4x64^3 fp16"


def stn_grid(device: torch.device) -> str:
    from attnseg.attention.stn import SpatialTransformer

    worst = {}
    for dtype in ([torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.bfloat16]):
        torch.manual_seed(0)
        m = SpatialTransformer(4, 3).to(device)
        with torch.no_grad():
            m.fc2.bias.add_(torch.randn(12, device=device) * 0.05)
            m.fc2.weight.normal_(0, 0.01)
        g = torch.linspace(0, 6.28, 24, device=device)
        x = (torch.sin(g)[:, None, None] * torch.cos(g)[None, :, None] * torch.sin(2 * g)).expand(1, 4, 24, 24, 24)
        x = x.contiguous()
        with torch.no_grad():
            ref = m(x)
            with torch.autocast(device.type, dtype=dtype):
                y = m(x)
        worst[str(dtype).split(".")[-1]] = float((y.float() - ref).abs().max())
    if max(worst.values()) > 2e-3:
        raise AssertionError(f"output differs from fp32: {worst}")
    return "max |half - fp32| " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())


# ----------------------------------------------------------------------------------------------
# distributed pieces


def device_mapping() -> str:
    from attnseg.train import distributed as D

    n = torch.cuda.device_count()
    k = max(n, 1)  # with no GPU, pretend one to exercise the refusal
    env = {"LOCAL_RANK": str(k), "LOCAL_WORLD_SIZE": str(k + 1), "WORLD_SIZE": str(k + 1)}
    try:
        D.pick_device("cuda", env, cuda_count=k)
        raise AssertionError("a rank without a GPU was accepted")
    except ValueError:
        pass
    assert D.backend_for("auto", torch.device("cuda:0")) == "cpu:gloo,cuda:nccl"
    got = D.pick_device("auto", {})
    return f"{n} GPU(s); device auto -> {got}; local rank {k} with {k} GPU(s) refused"


def reduction(device: torch.device) -> str:
    """A one-rank group with the backend the trainer uses; the collectives forced (world 2)."""
    import torch.distributed as dist

    from attnseg.train import distributed as D

    backend = D.backend_for("auto", device)
    store = dist.FileStore(tempfile.mktemp(prefix="attnseg-smoke-"), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1,
                            device_id=device if device.type == "cuda" else None)
    try:
        dd = D.DistInfo(0, 2, 0, D.reduce_device(device, backend))
        out = D.all_reduce_sum(torch.tensor([1.0, 2.0], device=device), dd)
        assert out.tolist() == [1.0, 2.0], out
        assert D.any_rank(True, dd)
        objs: list = [None]
        dist.all_gather_object(objs, {"rank": 0})
        from attnseg.train.step import reduce_mean

        means = reduce_mean({"loss": torch.tensor(4.0, device=device)}, 2, dd)
        assert abs(means["loss"] - 1.0) < 1e-9, means
    finally:
        dist.destroy_process_group()
    return f"backend {backend}, reductions on {dd.reduce_device}"


def rng_per_device(device: torch.device) -> str:
    from attnseg.train import distributed as D

    torch.manual_seed(1)
    s = D.rng_state(device)
    a = torch.rand(4, device=device)
    D.set_rng_state(s, device)
    b = torch.rand(4, device=device)
    assert torch.equal(a, b)
    return "state of " + (f"cuda:{s['cuda_device']}" if "cuda" in s else "cpu") + " restored"


# ----------------------------------------------------------------------------------------------
# training, resume, predict


def _tiny_cfg(out: Path, name: str, device: torch.device, **train: object) -> dict:
    gpu = device.type == "cuda"
    return {"name": name, "output_dir": str(out), "seed": 3, "device": str(device),
            "model": {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 2, "out_channels": 4,
                                                 "features": [8, 16, 16]}},
            "task": {"kind": "brats-regions", "num_classes": 4, "in_channels": 2},
            "data": {"patch_size": [32 if gpu else 16] * 3, "batch_size": 2, "foreground_fraction": 0.5},
            "train": {"epochs": 4, "iterations_per_epoch": 3 if gpu else 1, "optimizer": {"name": "sgd", "lr": 0.01},
                      "schedule": {"name": "constant"}, "compile": False, **train},
            # one window per validation case on the CPU (a smoke test, not a benchmark)
            "validation": {"interval": 2, "roi_size": [32 if gpu else 40] * 3},
            "log": {"tensorboard": False, "curves": False, "progress": "lines"}}


def _volumes(n: int, seed: int) -> list:
    from attnseg.train.data import Volume

    rng = np.random.default_rng(seed)
    vols = []
    for i in range(n):
        lab = np.zeros((40, 40, 40), np.uint8)
        c = rng.integers(12, 28, 3)
        for r, v in ((8, 2), (5, 1), (3, 3)):
            lab[c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = v
        contrast = np.float32([1, -1]).reshape(2, 1, 1, 1)
        img = 1 + rng.normal(size=(2, 40, 40, 40)).astype(np.float32) * 0.3 + lab[None] * contrast
        vols.append(Volume(f"c{seed}_{i}", img.astype(np.float32), lab))
    return vols


def trainer(device: torch.device, precision: str, compile: bool = False) -> str:
    import logging

    from attnseg.train.trainer import run_training

    logging.getLogger("attnseg.train").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_training(_tiny_cfg(Path(tmp), "t", device, precision=precision, compile=compile),
                           volumes=(_volumes(4, 0), _volumes(2, 1)))
    last = res.history[-1]
    if not np.isfinite(last["train_loss"]) or "val_dice_mean" not in last:
        raise AssertionError(f"last row {last}")
    first = res.history[0]["train_loss"]
    mode = precision + (" compiled" if compile else "")
    return f"{mode}: loss {first:.3f} -> {last['train_loss']:.3f}, val Dice {last['val_dice_mean']:.3f}"


def resume(device: torch.device) -> str:
    import logging

    from attnseg.train.checkpoint import load_checkpoint
    from attnseg.train.trainer import run_training

    logging.getLogger("attnseg.train").setLevel(logging.WARNING)
    vols = (_volumes(4, 0), _volumes(2, 1))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        kw = {"precision": "fp32", "deterministic": True}
        run_training(_tiny_cfg(t, "straight", device, **kw), volumes=vols)
        run_training(_tiny_cfg(t, "split", device, stop_after_epochs=2, **kw), volumes=vols)
        run_training(_tiny_cfg(t, "split", device, **kw), resume=True, volumes=vols)
        a = load_checkpoint(t / "straight" / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(t / "split" / "checkpoints" / "last.pt")["model"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    if diff > 1e-3:
        raise AssertionError(f"straight vs resumed weights differ by {diff:.2e}")
    exact = "bit-identical" if diff == 0 else f"max |diff| {diff:.1e} (non-deterministic kernels)"
    return f"4 epochs vs 2 + resume + 2: {exact}"


def stitching(device: torch.device, size: int) -> str:
    from attnseg.infer.sliding_window import SlidingWindowInferer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(16, 4, 3, padding=1)).to(device).eval()
    x = torch.randn(1, 4, size, size, int(size * 0.65), device=device)
    kw = dict(overlap=0.5, blend="gaussian", sw_batch_size=2)
    gpu = SlidingWindowInferer(64, device="auto", **kw)
    cpu = SlidingWindowInferer(64, device="cpu", **kw)
    a, b = gpu(x, net), cpu(x, net)
    diff = float((a.cpu() - b).abs().max())
    if diff > 1e-4:
        raise AssertionError(f"GPU vs CPU stitching differ by {diff:.2e}")
    t_gpu = _timed(lambda: gpu(x, net).cpu(), 3, device)
    t_cpu = _timed(lambda: cpu(x, net), 3, device)
    return (f"{tuple(x.shape[2:])} roi 64: out on {a.device}; {t_gpu:.0f} ms vs CPU-stitched {t_cpu:.0f} ms, "
            f"|diff| {diff:.0e}")


def _step_fn(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, scaler: object) -> Callable:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out
        loss = out.float().square().mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return step


def cudnn_modes(device: torch.device, size: int) -> str:
    from attnseg.models import create_model
    from attnseg.train import distributed as D

    model = create_model("unet", spatial_dims=3, in_channels=4, out_channels=4, features=[16, 32, 64, 128]).to(device)
    x = torch.randn(1, 4, size, size, size, device=device)
    times = {}
    for det in (False, True):
        prev = D.configure_determinism(det, device)
        try:
            times["deterministic" if det else "benchmark"] = _timed(_step_fn(model, x, None, None), 5, device)
        finally:
            D.restore_determinism(prev)
    return (f"unet 1x4x{size}^3 step: benchmark {times['benchmark']:.1f} ms, deterministic "
            f"{times['deterministic']:.1f} ms ({times['deterministic'] / times['benchmark']:.2f}x)")


def panet_fp16_vs_fp32(device: torch.device, size: int) -> str:
    from attnseg.models import create_model
    from attnseg.train import distributed as D

    prev = D.configure_determinism(False, device)
    try:
        model = create_model("panet-brats").to(device)
        x = torch.randn(1, 4, size, size, size, device=device)
        t32 = _timed(_step_fn(model, x, None, None), 3, device)
        t16 = _timed(_step_fn(model, x, torch.float16, torch.amp.GradScaler("cuda")), 3, device)
        tbf = _timed(_step_fn(model, x, torch.bfloat16, None), 3, device) if D.cuda_bf16_supported(device) else None
    finally:
        D.restore_determinism(prev)
    bf = f", bf16 {tbf:.0f} ms" if tbf is not None else ""
    return f"panet-brats 1x4x{size}^3 step: fp32 {t32:.0f} ms, fp16+scaler {t16:.0f} ms ({t32 / t16:.2f}x){bf}"


def torchrun_two_ranks() -> str:
    if torch.cuda.device_count() < 2:
        raise _Unmeasured("needs 2 GPUs (nccl refuses two ranks on one GPU)")
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        from attnseg.data.synth import make_synth_brats

        make_synth_brats(t / "data", cases=4, spacing=2, seed=0)
        cfg = _tiny_cfg(t, "ddp", torch.device("cuda"), epochs=2)
        cfg["task"]["in_channels"] = 4
        cfg["model"]["kwargs"]["in_channels"] = 4
        cfg["data"].update({"root": str(t / "data"), "layout": "brats", "val_fraction": 0.5, "batch_size": 1})
        cfg["validation"] = {"interval": 1, "roi_size": [32, 32, 32]}
        (t / "c.yaml").write_text(yaml.safe_dump(cfg))
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "attnseg", "train", "--config", str(t / "c.yaml")], capture_output=True, text=True,
                           timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if p.returncode:
            raise AssertionError((p.stdout + p.stderr).strip().splitlines()[-1])
        from attnseg.train.checkpoint import load_checkpoint

        ck = load_checkpoint(t / "ddp" / "checkpoints" / "last.pt")
    d = ck["rank_weight_digests"]
    if len(set(d)) != 1:
        raise AssertionError(f"rank weights differ: {d}")
    return f"2 ranks x 2 epochs, epoch {ck['epoch']}, equal parameter digests"


class _Unmeasured(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    cpu = torch.device("cpu")
    print(f"attnseg GPU smoke test — torch {torch.__version__}, "
          + (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda else "no CUDA device: "
             "every [gpu] line is UNMEASURED; [cpu] lines run the same checks on the CPU"), flush=True)
    small = 8 if args.quick else 16
    line("attention modules fp32 (fwd+bwd)", False, lambda: attention_modules(cpu, None, 8))
    line("attention modules bf16 autocast (fwd+bwd)", False, lambda: attention_modules(cpu, torch.bfloat16, 8))
    for name, dt in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        line(f"attention modules {name} on CUDA (fwd+bwd)", True, lambda dt=dt: attention_modules(_gpu(), dt, small))
    line("DANet 64^3 fp16 autocast stays finite", False, lambda: danet_fp16_64(cpu))
    line("DANet 64^3 fp16 autocast stays finite", True, lambda: danet_fp16_64(_gpu()))
    line("STN grid in fp32 under autocast", False, lambda: stn_grid(cpu))
    line("STN grid in fp32 under autocast", True, lambda: stn_grid(_gpu()))
    line("rank -> GPU mapping, backend strings", False, device_mapping)
    line("metric reduction (gloo)", False, lambda: reduction(cpu))
    line("metric reduction on the GPU (cpu:gloo,cuda:nccl)", True, lambda: reduction(_gpu()))
    line("RNG state per device", True, lambda: rng_per_device(_gpu()))
    line("trainer + validation, precision auto", False, lambda: trainer(cpu, "auto"))
    line("trainer + validation, precision auto", True, lambda: trainer(_gpu(), "auto"))
    line("trainer + validation, fp16 + GradScaler", True, lambda: trainer(_gpu(), "fp16"))
    line("trainer + validation, torch.compile", True, lambda: trainer(_gpu(), "auto", compile=True))
    line("resume (deterministic)", True, lambda: resume(_gpu()))
    line("sliding-window stitching GPU vs CPU", True, lambda: stitching(_gpu(), 128 if args.quick else 240))
    line("cuDNN benchmark vs deterministic", True, lambda: cudnn_modes(_gpu(), 64 if args.quick else 96))
    line("panet-brats step fp16 vs fp32", True, lambda: panet_fp16_vs_fp32(_gpu(), 64 if args.quick else 128))

    def ddp() -> str:
        try:
            return torchrun_two_ranks()
        except _Unmeasured as exc:
            return f"UNMEASURED: {exc}"
    line("torchrun 2 ranks x 2 epochs (nccl)", True, ddp)
    failed = [r for r in RESULTS if r[0] == "FAIL"]
    counts = {s: sum(r[0] == s for r in RESULTS) for s in ("OK", "FAIL", "UNMEASURED")}
    print(f"summary: {counts['OK']} OK, {counts['FAIL']} FAIL, {counts['UNMEASURED']} UNMEASURED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
