"""Per-case evaluation time: ``attnseg evaluate``'s scoring vs MONAI vs MedPy, side by side.

One BraTS-sized case (240×240×155, 1 mm): a reference tumour (nested ellipsoids, labels
2 ⊃ 1 ⊃ 3) and a prediction that is the tumour slightly shifted and grown plus scattered small
false positives all over the volume (1–8 voxel blobs of random labels), the case that makes
whole-volume distance transforms expensive. Every tool scores the same three BraTS regions
(ET, TC, WT) with Dice, HD95 and ASSD in mm:

* attnseg: ``attnseg.metrics.evaluate.evaluate_case`` (what ``attnseg evaluate`` runs per case
  once the files are read: region masks, Dice, Jaccard, sensitivity, specificity, HD95
  ``monai``, ASSD, volumes);
* MONAI: ``DiceMetric`` + ``HausdorffDistanceMetric(percentile=95)`` +
  ``SurfaceDistanceMetric(symmetric=True)`` on the (1, 3, H, W, D) region tensors;
* MedPy: ``dc`` + ``hd95`` + ``assd`` per region (medpy is a benchmark-only dependency:
  ``pip install 'attnseg[bench]'``; skipped with a note when missing).

The three run in turn inside every repeat (alternating, after an untimed warm-up on a small
case), one thread each; the table gives
min / median / max seconds (process CPU time by default, the steadier clock on a shared
machine; ``--clock wall`` for wall-clock) and the ratio of medians to MONAI. Extra rows time attnseg's
other modes on the same case (HD95 ``deepmind``, and ``--lesion-wise`` with the BraTS 2023
script's procedure). A last table checks that the numbers agree.

Usage: python benchmarks/evaluate.py [--quick] [--repeats N] [--fp N] [--clock cpu|wall] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def make_case(shape=(240, 240, 155), n_fp: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) BraTS label maps (labels 0/1/2/3) with scattered false positives."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]

    def ellipsoid(centre, radii) -> np.ndarray:
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0

    c = np.array([110, 130, 75])
    ref = np.zeros(shape, np.uint8)
    ref[ellipsoid(c, (38, 30, 26))] = 2
    ref[ellipsoid(c + 3, (20, 17, 14))] = 1
    ref[ellipsoid(c + 3, (20, 17, 14)) & ~ellipsoid(c + 3, (14, 11, 9))] = 3
    pred = np.zeros(shape, np.uint8)
    d = np.array([2, -1, 1])
    pred[ellipsoid(c + d, (40, 29, 27))] = 2
    pred[ellipsoid(c + d + 3, (21, 16, 15))] = 1
    pred[ellipsoid(c + d + 3, (21, 16, 15)) & ~ellipsoid(c + d + 3, (13, 11, 10))] = 3
    for _ in range(n_fp):
        lo = [int(rng.integers(0, n - 2)) for n in shape]
        size = rng.integers(1, 3, 3)
        pred[tuple(slice(a, a + s) for a, s in zip(lo, size))] = int(rng.integers(1, 4))
    return pred, ref


def regions(label: np.ndarray) -> np.ndarray:
    from attnseg.data.labels import brats_to_regions

    return brats_to_regions(label, "brats2023")


def run_attnseg(pred, ref, sp, **kw) -> dict[str, tuple[float, float, float]]:
    from attnseg.metrics.evaluate import evaluate_case

    rows = evaluate_case(pred, ref, regions="brats", spacing=sp, **kw)
    return {r["region"]: (r["dice"], r["hd95"], r["assd"]) for r in rows}


def run_monai(pred, ref, sp) -> dict[str, tuple[float, float, float]]:
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    p = torch.from_numpy(regions(pred))[None].float()
    r = torch.from_numpy(regions(ref))[None].float()
    d = DiceMetric(include_background=True)(p, r)[0]
    h = HausdorffDistanceMetric(include_background=True, percentile=95)(p, r, spacing=sp)[0]
    a = SurfaceDistanceMetric(include_background=True, symmetric=True)(p, r, spacing=sp)[0]
    return {name: (float(d[i]), float(h[i]), float(a[i])) for i, name in enumerate(("ET", "TC", "WT"))}


def run_medpy(pred, ref, sp) -> dict[str, tuple[float, float, float]]:
    from medpy.metric import binary

    p, r = regions(pred), regions(ref)
    return {name: (binary.dc(p[i], r[i]), binary.hd95(p[i], r[i], sp), binary.assd(p[i], r[i], sp))
            for i, name in enumerate(("ET", "TC", "WT"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat (the default is 2)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time (default) or wall time")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--fp", type=int, default=300, help="number of scattered false-positive blobs")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from attnseg.report.table import markdown_table, print_table

    repeats = args.repeats or (1 if args.quick else 2)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    pred, ref = make_case(n_fp=args.fp)
    sp = (1.0, 1.0, 1.0)
    tools = {"attnseg evaluate (Dice, HD95 monai, ASSD, ...)": lambda: run_attnseg(pred, ref, sp),
             "MONAI Dice + HD95 + ASSD": lambda: run_monai(pred, ref, sp)}
    try:
        import medpy  # noqa: F401

        tools["MedPy dc + hd95 + assd"] = lambda: run_medpy(pred, ref, sp)
    except ImportError:
        print("note: medpy not installed (pip install 'attnseg[bench]'): MedPy row skipped")
    extra = {"attnseg, HD95 deepmind": lambda: run_attnseg(pred, ref, sp, hd_method="deepmind"),
             "attnseg, + --lesion-wise (BraTS 2023, GLI)": lambda: run_attnseg(pred, ref, sp, lesion_wise=True)}
    try:
        import surface_distance  # noqa: F401
    except ImportError:
        extra = {}
        print("note: surface-distance not installed (pip install 'attnseg[brats2023]'): deepmind rows skipped")
    allt = {**tools, **extra}
    # warm-up on a crop around the tumour (imports, first-call costs), untimed
    crop = (slice(70, 152), slice(98, 164), slice(46, 106))
    wp, wr = pred[crop], ref[crop]
    warm = {"attnseg": lambda: run_attnseg(wp, wr, sp, lesion_wise=bool(extra)), "MONAI": lambda: run_monai(wp, wr, sp)}
    if "MedPy dc + hd95 + assd" in tools:
        warm["MedPy"] = lambda: run_medpy(wp, wr, sp)
    if extra:
        warm["deepmind"] = lambda: run_attnseg(wp, wr, sp, hd_method="deepmind")
    for fn in warm.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in allt}
    values: dict[str, dict] = {}
    for _ in range(repeats):  # alternate the tools inside every repeat
        for name, fn in allt.items():
            t0 = clock()
            values[name] = fn()
            times[name].append(clock() - t0)
    monai_med = statistics.median(times["MONAI Dice + HD95 + ASSD"])
    rows = [{"tool": name, "min s": round(min(t), 3), "median s": round(statistics.median(t), 3),
             "max s": round(max(t), 3), "MONAI median / median": round(monai_med / statistics.median(t), 2)}
            for name, t in times.items()]
    n_fg = int(np.count_nonzero(pred))
    title = (f"one case 240×240×155, 1 mm, {args.fp} scattered false-positive blobs ({n_fg} predicted voxels); "
             f"3 regions; {repeats} alternating repeats, 1 thread, {args.clock} seconds")
    cols = list(rows[0])
    # agreement: attnseg (monai definitions) vs MONAI; MedPy's hd95 is the pooled definition
    att = values[next(iter(tools))]
    agree = []
    for name in ("MONAI Dice + HD95 + ASSD", "MedPy dc + hd95 + assd"):
        if name not in values:
            continue
        other = values[name]
        if name.startswith("MedPy"):
            mine = run_attnseg(pred, ref, sp, hd_method="pooled")
        else:
            mine = att
        diffs = np.abs(np.array([mine[k] for k in ("ET", "TC", "WT")]) - np.array([other[k] for k in ("ET", "TC",
                                                                                                        "WT")]))
        agree.append({"compared with": name, "attnseg definition": "pooled" if name.startswith("MedPy") else "monai",
                      "max abs Δ Dice": f"{diffs[:, 0].max():.2e}", "max abs Δ HD95 (mm)": f"{diffs[:, 1].max():.2e}",
                      "max abs Δ ASSD (mm)": f"{diffs[:, 2].max():.2e}"})
    if args.markdown:
        print(f"**Per-case scoring time** ({title})\n")
        print(markdown_table(rows, cols))
        print("\n**Agreement** (same case)\n")
        print(markdown_table(agree, list(agree[0])))
    else:
        print_table(rows, cols, title=title)
        print_table(agree, list(agree[0]), title="agreement")


if __name__ == "__main__":
    main()
