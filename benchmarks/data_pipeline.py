"""Training patches per second: attnseg's patch pipeline vs an equivalent MONAI dict-transform chain.

Both run in one process with one torch thread (what a single DataLoader worker gets), on the
same BraTS-sized phantom cases (1 mm, 240×240×155, 4 modalities + seg, written by
``attnseg data synth-brats --spacing 1``), all augmentations on, including the deformation.

attnseg: CaseCache (preprocessing done once, memory-mapped .npy; its one-off cost is printed
separately) → PatchDataset(fg_fraction 0.33, AugmentConfig.all_on(): flips, 90° rotation,
rotation/scale + elastic field on the patch grid, scale, shift, gamma, noise, bias field).

MONAI: LoadImaged → EnsureChannelFirstd → RandSpatialCropd(128³/96³) →
NormalizeIntensityd(nonzero, channel-wise) → RandFlipd ×3 → RandScaleIntensityd →
RandShiftIntensityd → Rand3DElasticd (the reference's ranges: sigma 1–20, magnitude 0.3–2.3,
rotation ±30°, shear 0.1, scale ±0.2; bilinear image, nearest label; prob 1), and the same
chain without the elastic step.

Times are reported as CPU seconds of this process (robust when other jobs share the machine;
with one thread it is what an idle core would take) and as wall-clock seconds.

Usage: python benchmarks/data_pipeline.py [--quick] [--data DIR] [--sizes 128 96]

``--learnability DIR`` instead checks that the 2 mm phantoms are learnable: DIR holds
``attnseg data synth-brats --cases 30 --spacing 2`` output; a small 3D U-Net (MONAI UNet,
channels 8-16-32-64, one residual unit) trains on the first 25 cases (64³ patches, batch 2,
fg_fraction 0.5, default augmentation, DiceCE on the 4 classes, AdamW 3e-3, one thread) for
``--cpu-budget`` CPU seconds, then reports ET/TC/WT Dice on the last 5 (sliding window 64³).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch


def make_cases(root: Path, n: int) -> list[Path]:
    from attnseg.data.synth import make_synth_brats

    have = sorted(p for p in root.glob("BraTS20_Synth_*") if (p / f"{p.name}_seg.nii.gz").is_file())
    if len(have) >= n:
        return have[:n]
    t = time.perf_counter()
    paths = make_synth_brats(root, cases=n, spacing=1, seed=123)
    print(f"wrote {n} BraTS-sized phantom cases in {time.perf_counter() - t:.1f} s")
    return paths


def monai_chain(size: int, elastic: bool):
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Rand3DElasticd,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
    )

    keys = ["image", "label"]
    t = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        RandSpatialCropd(keys=keys, roi_size=(size,) * 3, random_size=False),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ]
    if elastic:
        t.append(Rand3DElasticd(keys=keys, sigma_range=(1, 20), magnitude_range=(0.3, 2.3), prob=1.0,
                                rotate_range=(math.pi / 6,) * 3, shear_range=0.1, scale_range=0.2,
                                mode=("bilinear", "nearest"), padding_mode="zeros"))
    c = Compose(t)
    c.set_random_state(seed=0)
    return c


def time_monai(case_dirs: list[Path], size: int, elastic: bool, n: int) -> tuple[float, float]:
    chain = monai_chain(size, elastic)
    items = [{"image": [str(d / f"{d.name}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")],
              "label": str(d / f"{d.name}_seg.nii.gz")} for d in case_dirs]
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        out = chain(items[i % len(items)])
        assert tuple(out["image"].shape) == (4, size, size, size), out["image"].shape
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def attnseg_configs():
    from attnseg.data.augment import AugmentConfig

    return {
        # every augmentation on every patch (flips/rot90 at p 0.5 each)
        "attnseg, all augmentations": AugmentConfig.all_on(),
        # the MONAI chain's set: flips, intensity scale + shift, rotation/scale/elastic deformation
        "attnseg, MONAI-equivalent set": AugmentConfig(p_flip=0.5, p_rot90=0, p_deform=1, p_scale=1, p_shift=1,
                                                       p_gamma=0, p_noise=0, p_bias=0),
        "attnseg, no augmentation": AugmentConfig.none(),
    }


def time_attnseg(cache, size: int, n: int, aug) -> tuple[float, float]:
    from attnseg.data.dataset import PatchDataset

    ds = PatchDataset(cache, (size,) * 3, samples_per_epoch=n + 1, fg_fraction=0.33, augment=aug, seed=1)
    ds[0]  # open the memory maps (first touch) outside the timing
    t, c = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        out = ds[i]
        assert tuple(out["image"].shape) == (4, size, size, size)
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def learnability(root: Path, cpu_budget: float) -> None:
    import numpy as np
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from torch.utils.data import DataLoader

    from attnseg.data.augment import AugmentConfig
    from attnseg.data.cache import CaseCache
    from attnseg.data.dataset import PatchDataset, VolumeDataset, worker_init_fn
    from attnseg.data.labels import classes_to_regions
    from attnseg.report.table import print_table

    torch.manual_seed(0)
    cache = CaseCache(root, root.with_name(root.name + "_cache"))
    cache.prepare()
    n = len(cache)
    train, test = list(range(n - 5)), list(range(n - 5, n))
    ds = PatchDataset(cache, (64, 64, 64), samples_per_epoch=1000, fg_fraction=0.5, augment=AugmentConfig(),
                      case_indices=train)
    dl = DataLoader(ds, batch_size=2, num_workers=1, worker_init_fn=worker_init_fn)
    net = UNet(3, 4, 4, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    t0, c0, step, epoch = time.perf_counter(), time.process_time(), 0, 0
    while time.process_time() - c0 < cpu_budget:
        ds.set_epoch(epoch)
        epoch += 1
        for b in dl:
            loss = loss_fn(net(b["image"]), b["label"][:, None])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if time.process_time() - c0 >= cpu_budget:
                break
    print(f"trained {step} steps: {time.process_time() - c0:.0f} CPU s, {time.perf_counter() - t0:.0f} s wall")
    net.eval()
    vd = VolumeDataset(cache, test)
    rows = []
    with torch.no_grad():
        for i in range(len(vd)):
            item = vd[i]
            pred = sliding_window_inference(item["image"][None], (64, 64, 64), 4, net, overlap=0.25).argmax(1)[0]
            pr, gt = classes_to_regions(pred.numpy()), classes_to_regions(item["label"].numpy())
            row = {"case": item["case_id"]}
            for r, name in enumerate(("ET", "TC", "WT")):
                denom = pr[r].sum() + gt[r].sum()  # empty reference and prediction count as 1
                row[name] = 1.0 if denom == 0 else float(2 * (pr[r] & gt[r]).sum() / denom)
            rows.append(row)
    rows.append({"case": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in ("ET", "TC", "WT")}})
    print_table(rows, ["case", "ET", "TC", "WT"], title="held-out Dice, small 3D U-Net on 2 mm phantoms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few samples (about 2-4 minutes)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "attnseg_bench_brats1mm")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 96])
    ap.add_argument("--learnability", type=Path, default=None, metavar="DIR",
                    help="train/evaluate a small 3D U-Net on 2 mm phantoms in DIR instead")
    ap.add_argument("--cpu-budget", type=float, default=600.0, help="training CPU seconds for --learnability")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    if args.learnability is not None:
        learnability(args.learnability, args.cpu_budget)
        return

    from attnseg.data.cache import CaseCache
    from attnseg.data.readers import find_cases
    from attnseg.report.table import markdown_table, print_table

    dirs = make_cases(args.data, args.cases)
    cases = [c for c in find_cases(args.data) if c.case_id in {d.name for d in dirs}]
    cache = CaseCache(cases, args.data.with_name(args.data.name + "_cache"))
    t = time.perf_counter()
    built = cache.prepare()
    t_cache = (time.perf_counter() - t) / max(1, len(built))
    n_att, n_mon = (8, 2) if args.quick else (30, 6)
    rows = []
    for size in args.sizes:
        # interleave the measurements so that load from other processes hits both alike
        res = {}
        for name, aug in attnseg_configs().items():
            res[name] = time_attnseg(cache, size, n_att // 2, aug)
        res["MONAI + Rand3DElasticd"] = time_monai(dirs, size, True, n_mon)
        for name, aug in attnseg_configs().items():
            t2 = time_attnseg(cache, size, n_att - n_att // 2, aug)
            res[name] = tuple((x + y) / 2 for x, y in zip(res[name], t2))
        res["MONAI without elastic"] = time_monai(dirs, size, False, n_mon)
        ref = res["MONAI + Rand3DElasticd"]
        for name, (wall, cpu) in res.items():
            rows.append({"patch": f"{size}³", "pipeline": name, "CPU s/patch": cpu, "patches/s (CPU)": 1 / cpu,
                         "wall s/patch": wall, "speed-up vs MONAI+elastic (CPU)": ref[1] / cpu,
                         "(wall)": ref[0] / wall})
    cols = list(rows[0])
    print_table(rows, cols, title="training patches, 1 thread, BraTS-sized cases (240×240×155, 4 channels)")
    print(markdown_table(rows, cols))
    if built:
        print(f"attnseg one-off cache build: {t_cache:.2f} s per case (decode .nii.gz, crop, z-score, write .npy)")


if __name__ == "__main__":
    main()
