"""Small on-the-fly datasets (32³ cases written with nibabel) in every supported layout
(the data tests' fixtures are in tests/data/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (32, 32, 32)
BRATS_MODS = ("t1", "t1ce", "t2", "flair")
BRATS23_MODS = ("t1n", "t1c", "t2w", "t2f")


def affine_for(i: int = 0) -> np.ndarray:
    """A non-trivial affine (flips, anisotropic spacing, offset) so that 'preserved' means something."""
    return np.array([[-1.0, 0, 0, 10.0 + i], [0, -1.2, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])


def write(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine if affine is not None else affine_for())
    img.set_data_dtype(arr.dtype)
    nib.save(img, str(path))
    return path


def label_volume(seed: int, values=(0, 1, 2, 4)) -> np.ndarray:
    """Nested blobs: ED shell (values[2]) ⊃ ET (values[3]) ⊃ NCR (values[1]), centred at a seeded spot."""
    rng = np.random.default_rng(seed)
    c = rng.integers(12, 20, 3)
    g = np.indices(SHAPE)
    r = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[r < 9] = values[2]
    lab[r < 6] = values[3]
    lab[r < 3] = values[1]
    return lab


def modality_volume(seed: int, channel: int) -> np.ndarray:
    """Brain-like box of constant value 100·(channel+1) (+ a little noise), zero background."""
    rng = np.random.default_rng(1000 * seed + channel)
    img = np.zeros(SHAPE, dtype=np.float32)
    img[4:28, 3:29, 5:27] = 100.0 * (channel + 1) + rng.normal(0, 1, (24, 26, 22))
    return img


def make_brats(root: Path, n: int = 3, release: str = "2020") -> Path:
    mods = BRATS_MODS if release == "2020" else BRATS23_MODS
    sep = "_" if release == "2020" else "-"
    values = (0, 1, 2, 4) if release == "2020" else (0, 1, 2, 3)
    for i in range(n):
        cid = f"BraTS{release}_{i:03d}"
        for ch, m in enumerate(mods):
            write(root / cid / f"{cid}{sep}{m}.nii.gz", modality_volume(i, ch), affine_for(i))
        write(root / cid / f"{cid}{sep}seg.nii.gz", label_volume(i, values), affine_for(i))
    (root / "name_mapping.csv").write_text("stray,csv\n")  # real BraTS folders hold csv files
    return root


def make_nnunet(root: Path, n: int = 3) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    json.dump({"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2},
               "numTraining": n, "file_ending": ".nii.gz"}, open(root / "dataset.json", "w"))
    for i in range(n):
        for ch in range(2):
            write(root / "imagesTr" / f"case_{i:03d}_{ch:04d}.nii.gz", modality_volume(i, ch))
        write(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.minimum(label_volume(i, (0, 1, 2, 1)), 2))
    return root


def make_paired(root: Path, n: int = 3, phase: str | None = "train", mask_suffix: str = "_glm") -> Path:
    base = root / phase if phase else root
    # names chosen so that sorted listings of images/ and masks/ would NOT pair up by position
    ids = [f"{1000 + 7 * (n - i)}_3" for i in range(n)]
    for i, cid in enumerate(ids):
        write(base / "images" / f"{cid}.nii.gz", modality_volume(i, 0))
        write(base / "masks" / f"{cid}{mask_suffix}.nii.gz", label_volume(i, (0, 1, 2, 3)))
    return root


def make_manifest(root: Path, n: int = 3, kind: str = "csv") -> Path:
    rows = []
    for i in range(n):
        imgs = [write(root / "img" / f"s{i}_c{ch}.nii.gz", modality_volume(i, ch)) for ch in range(2)]
        lab = write(root / "lab" / f"s{i}.nii.gz", label_volume(i, (0, 1, 2, 3)))
        rows.append({"case_id": f"subj{i}", "images": [str(p.relative_to(root)) for p in imgs],
                     "label": str(lab.relative_to(root))})
    if kind == "csv":
        lines = ["case_id,image_0,image_1,label"] + [f"{r['case_id']},{r['images'][0]},{r['images'][1]},{r['label']}"
                                                    for r in rows]
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
        return root / "manifest.csv"
    (root / "manifest.json").write_text(json.dumps({"channels": ["a", "b"], "labels": [0, 1, 2, 3], "cases": rows}))
    return root / "manifest.json"
