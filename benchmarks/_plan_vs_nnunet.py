"""``attnseg plan`` next to nnU-Net v2's ``nnUNetv2_plan_and_preprocess`` on two datasets made here.

* ``Dataset501_MRBrain``: 12 MR cases, 2 channels (T2, FLAIR), about 1 mm isotropic, a head-shaped
  non-zero region (cropping removes > 25 % of the volume), labels 1 ``oedema`` and 2 ``tumour``.
* ``Dataset502_CTAniso``: 10 CT cases, one channel in Hounsfield units, 0.7–0.9 mm in-plane and
  2.5–5 mm slices (anisotropic: nnU-Net's rule picks the 10th percentile of the slice spacing),
  labels 1 ``organ`` and 2 ``tumour``.

Both planners get the same 8 GB target (nnU-Net's default; attnseg: ``--memory-gb 8 --precision
mixed``, as nnU-Net trains with mixed precision). nnU-Net runs fingerprint extraction and planning
only (``--no_pp``), with ``nnUNet_raw/preprocessed/results`` under a temporary folder. Prints a
Markdown table (values in NIfTI array order x × y × z; nnU-Net's own order is reversed by
SimpleITK and transposed to put the coarsest axis first, which is undone here).

Needs ``pip install "torch==<installed>" nnunetv2`` (not an attnseg dependency).

    python benchmarks/_plan_vs_nnunet.py [--workdir /tmp/plan_vs_nnunet]

(The leading underscore keeps it out of ``make bench``: it needs nnunetv2 and measures no speed.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def _blob(shape, centre, radii) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def make_mr(root: Path, n: int = 12, seed: int = 0) -> Path:
    ds = root / "Dataset501_MRBrain"
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers([128, 150, 124], [144, 172, 140]))
        sp = tuple(float(s) for s in rng.uniform(0.95, 1.05, 3).round(3))
        c = np.asarray(shape) / 2
        head = _blob(shape, c, np.asarray(shape) * [0.36, 0.42, 0.40])
        lc = c + rng.uniform(-15, 15, 3)
        r = rng.uniform(8, 14)
        lab = np.zeros(shape, np.uint8)
        lab[_blob(shape, lc, [2 * r] * 3) & head] = 1
        lab[_blob(shape, lc, [r] * 3) & head] = 2
        t2 = np.where(head, 300.0 + 80.0 * lab + rng.normal(0, 20, shape), 0)
        fl = np.where(head, 200 + 150 * (lab == 1) + 60 * (lab == 2) + rng.normal(0, 15, shape), 0)
        aff = np.diag([*sp, 1.0])
        for k, img in enumerate((t2, fl)):
            (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), str(ds / "imagesTr" / f"mr_{i:03d}_{k:04d}.nii.gz"))
        (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(lab, aff), str(ds / "labelsTr" / f"mr_{i:03d}.nii.gz"))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "FLAIR"},
                                                 "labels": {"background": 0, "oedema": 1, "tumour": 2},
                                                 "numTraining": n, "file_ending": ".nii.gz"}, indent=1))
    return ds


def make_ct(root: Path, n: int = 10, seed: int = 1) -> Path:
    ds = root / "Dataset502_CTAniso"
    rng = np.random.default_rng(seed)
    for i in range(n):
        inplane = round(float(rng.uniform(0.7, 0.9)), 3)
        dz = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
        nz = int(round(rng.uniform(150, 220) / dz))
        shape = (int(rng.integers(220, 260)), int(rng.integers(220, 260)), nz)
        c = np.asarray(shape) / 2
        body = _blob(shape, c, [shape[0] * 0.45, shape[1] * 0.35, shape[2] * 2])
        organ = _blob(shape, c + [20, 0, 0], [40, 30, 60 / dz])
        tum = _blob(shape, c + [20 + rng.uniform(-10, 10), rng.uniform(-8, 8), 0], [12, 12, 12 / dz])
        lab = np.zeros(shape, np.uint8)
        lab[organ] = 1
        lab[tum & organ] = 2
        hu = np.where(body, 40 + rng.normal(0, 10, shape), -1000 + rng.normal(0, 5, shape))
        hu = hu + 50.0 * (lab == 1) + 10.0 * (lab == 2)
        aff = np.diag([inplane, inplane, dz, 1.0])
        (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
        (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu.astype(np.int16), aff), str(ds / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(ds / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                 "labels": {"background": 0, "organ": 1, "tumour": 2},
                                                 "numTraining": n, "file_ending": ".nii.gz"}, indent=1))
    return ds


def _nib_order(values, transpose_forward) -> list:
    """nnU-Net's internal axis k is SimpleITK axis ``transpose_forward[k]`` = NIfTI axis 2 − that."""
    out = [None] * 3
    for k, v in enumerate(values):
        out[2 - int(transpose_forward[k])] = v
    return out


def run_nnunet(raw: Path, ids: list[int]) -> dict[int, dict]:
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(raw.parent / "nnUNet_preprocessed"),
           "nnUNet_results": str(raw.parent / "nnUNet_results"), "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    subprocess.run([str(exe), "-d", *map(str, ids), "--no_pp", "-npfp", "2"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    out = {}
    for i in ids:
        name = next(p.name for p in raw.iterdir() if p.name.startswith(f"Dataset{i:03d}_"))
        plans = json.loads((raw.parent / "nnUNet_preprocessed" / name / "nnUNetPlans.json").read_text())
        out[i] = plans
    return out


def _x(v) -> str:
    return " × ".join(f"{float(a):.3g}" if isinstance(a, float) else str(a) for a in v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/plan_vs_nnunet")
    args = ap.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    raw = work / "nnUNet_raw"
    raw.mkdir(parents=True)
    datasets = {501: make_mr(raw), 502: make_ct(raw)}
    from attnseg.data.plan import plan_dataset

    ours = {i: plan_dataset(ds, memory_gb=8.0, device="cuda", precision="mixed") for i, ds in datasets.items()}
    theirs = run_nnunet(raw, list(datasets))
    print("| dataset | setting | attnseg plan | nnUNetv2_plan_and_preprocess (3d_fullres) |")
    print("|---|---|---|---|")
    for i, ds in datasets.items():
        cfg, pl = ours[i]["config"], theirs[i]
        c3 = pl["configurations"]["3d_fullres"]
        tf = pl["transpose_forward"]
        arch = c3["architecture"]["arch_kwargs"]
        strides = [_nib_order(s, tf) for s in arch["strides"]]
        pools = [sum(1 for s in strides if s[a] == 2) for a in range(3)]
        tsp = cfg["data"]["preprocess"]["target_spacing"] or ours[i]["fingerprint"]["cases"][0]["spacing"]
        rows = [
            ("target spacing (mm)", _x([round(float(s), 3) for s in tsp]),
             _x([round(float(s), 3) for s in _nib_order(c3["spacing"], tf)])),
            ("median shape (voxels)", _x(cfg["plan"]["median_shape"]),
             _x([int(round(s)) for s in _nib_order(c3["median_image_size_in_voxels"], tf)])),
            ("patch size", _x(cfg["data"]["patch_size"]), _x(_nib_order(c3["patch_size"], tf))),
            ("batch size", str(cfg["data"]["batch_size"]), str(c3["batch_size"])),
            ("normalisation", str(cfg["data"]["preprocess"]["normalize"]),
             f"{c3['normalization_schemes']} (mask: {c3['use_mask_for_norm']})"),
            ("network depth", f"{len(cfg['model']['kwargs']['features'])} levels, pooling 2 × 2 × 2 each; "
                              f"features {cfg['model']['kwargs']['features']}",
             f"{arch['n_stages']} stages, poolings per axis {_x(pools)}; features {list(arch['features_per_stage'])}"),
        ]
        for k, (name, a, b) in enumerate(rows):
            print(f"| {ds.name if k == 0 else ''} | {name} | {a} | {b} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
