"""Slice-wise prediction of a whole volume (2-D and 2.5-D U-Net) vs a 3-D U-Net of similar parameter count.

One input volume (random, ``1×4×X×Y×Z``; full run 240×240×155 = one BraTS case) and three
randomly initialised registered ``unet`` models with 4 inputs and 4 outputs:

* ``2d``: 2-D U-Net (``--features``), every axial slice (155 at full size) through
  :class:`attnseg.infer.slicewise.SliceInferer`, one in-plane window per slice (the slice
  padded to the window), ``--slice-batch`` slices per network call (what ``attnseg predict``
  does with a 2-D checkpoint);
* ``2.5d-k2``: the same with 2 neighbouring slices on each side as channels (20 inputs);
* ``3d``: 3-D U-Net whose base width is chosen so that its parameter count is closest to the
  2-D one, Gaussian sliding window (``--roi``³, overlap 0.5; what ``attnseg predict`` does with
  a 3-D checkpoint);
* ``2d-sb1``: the 2-D model one slice per call (shows what slice batching buys).

All run with attnseg's CPU fast paths (``enable_cpu_fastpaths`` + ``prepare_model``, as
``attnseg predict``) in one process, in alternating order (2d, 2.5d, 3d, 2d-sb1, 2d, …) so that
load from other users of a shared machine hits every mode alike; the tables give min / median /
max over ``--repeats``. Slices/s = axial slices of the volume segmented per second of wall time
(for the 3-D model: the volume's slices divided by its time per case).

    python benchmarks/slicewise.py --quick     # 120x120x78 (2 mm BraTS), 2 repeats
    python benchmarks/slicewise.py             # 240x240x155, 3 repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _unet(spatial_dims: int, in_ch: int, features: list[int]) -> torch.nn.Module:
    from attnseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", spatial_dims=spatial_dims, in_channels=in_ch, out_channels=4,
                        features=tuple(features)).eval()


def matched_3d_features(target: int, levels: int) -> list[int]:
    """Doubling widths ``[w, 2w, …]`` of the 3-D U-Net whose parameter count is closest to ``target``."""
    best = None
    for w in range(2, 65):
        feats = [w * 2 ** i for i in range(levels)]
        n = _params(_unet(3, 4, feats))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (feats, n)
        if n > target:
            break
    assert best is not None
    return best[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 mm BraTS size (120x120x78), 2 repeats")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="volume size (default 240 240 155)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128], help="2-D U-Net widths")
    p.add_argument("--roi", type=int, default=128, help="3-D window size (cube)")
    p.add_argument("--slice-batch", type=int, default=16, help="slices per network call")
    p.add_argument("--repeats", type=int, default=None, help="runs per mode (default 3, quick 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch's default; 1: CPU time is the steadier clock on a shared machine)")
    p.add_argument("--modes", nargs="+", default=["2d", "2.5d-k2", "3d", "2d-sb1"])
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    a = p.parse_args(argv)
    shape = a.shape or ([120, 120, 78] if a.quick else [240, 240, 155])
    repeats = a.repeats or (2 if a.quick else 3)
    if a.threads:
        torch.set_num_threads(a.threads)
    from attnseg.infer.fastpath import enable_cpu_fastpaths, prepare_model
    from attnseg.infer.slicewise import slice_inferer
    from attnseg.infer.sliding_window import SlidingWindowInferer

    enable_cpu_fastpaths()
    m2 = prepare_model(_unet(2, 4, a.features), 2, channels_last=False)
    m25 = prepare_model(_unet(2, 20, a.features), 2, channels_last=False)
    f3 = matched_3d_features(_params(m2), len(a.features))
    m3 = prepare_model(_unet(3, 4, f3), 3, channels_last=False)
    plane = shape[:2]
    modes = {
        "2d": (m2, slice_inferer(plane, "axial", 0, slice_batch=a.slice_batch, blend="gaussian"),
               f"2-D U-Net {a.features}, axial, {a.slice_batch} slices/call"),
        "2.5d-k2": (m25, slice_inferer(plane, "axial", 2, slice_batch=a.slice_batch, blend="gaussian"),
                    f"2.5-D U-Net {a.features}, k=2 (20 channels), {a.slice_batch} slices/call"),
        "3d": (m3, SlidingWindowInferer(a.roi, overlap=0.5, blend="gaussian"),
               f"3-D U-Net {f3}, window {a.roi}³, overlap 0.5"),
        "2d-sb1": (m2, slice_inferer(plane, "axial", 0, slice_batch=1, blend="gaussian"),
                   f"2-D U-Net {a.features}, axial, 1 slice/call"),
    }
    modes = {k: v for k, v in modes.items() if k in a.modes}
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 4, *shape), generator=g)
    times: dict[str, list[float]] = {k: [] for k in modes}
    cpu: dict[str, list[float]] = {k: [] for k in modes}
    with torch.no_grad():
        for name, (model, inf, _) in modes.items():  # warm-up (oneDNN primitive caches) on a few slices
            inf(x[..., : min(shape[2], 8)] if name != "3d" else x[..., : min(shape[2], a.roi)], model)
        for _ in range(repeats):
            for name, (model, inf, _) in modes.items():
                t0, c0 = time.perf_counter(), time.process_time()
                y = inf(x, model)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                assert y.shape == (1, 4, *shape)
    n_slices = shape[2]
    rows = []
    ref = statistics.median(times["3d"]) if "3d" in times else None
    cref = statistics.median(cpu["3d"]) if "3d" in cpu else None
    for name, (model, _, desc) in modes.items():
        t = times[name]
        med = statistics.median(t)
        c = cpu[name]
        cmed = statistics.median(c)
        rows.append([name, desc, f"{_params(model):,}", f"{min(t):.1f} / {med:.1f} / {max(t):.1f}",
                     f"{n_slices / max(t):.2f} / {n_slices / med:.2f} / {n_slices / min(t):.2f}",
                     f"{min(c):.1f} / {cmed:.1f} / {max(c):.1f}",
                     f"{n_slices / max(c):.2f} / {n_slices / cmed:.2f} / {n_slices / min(c):.2f}",
                     f"{ref / med:.2f}" if ref else "–", f"{cref / cmed:.2f}" if cref else "–"])
    head = ["mode", "model and inference", "params", "wall s per case (min / med / max)",
            "slices/s, wall (min / med / max)", "CPU s per case (min / med / max)",
            "slices per CPU-s (min / med / max)", "speed vs 3d, wall", "speed vs 3d, CPU"]
    title = (f"Volume 1×4×{'×'.join(map(str, shape))} ({n_slices} axial slices), {repeats} alternating repeats, "
             f"{torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}.")
    if a.markdown:
        print(title + "\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        print(title)
        for r in [head, *rows]:
            print("  ".join(str(c) for c in r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
