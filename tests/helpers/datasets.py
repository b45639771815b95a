"""Tiny nnU-Net, MSD and plain-folder datasets written on the fly (not a test module).

Two channels (``T2``, ``ADC``: MR names), labels 0 background, 1 ``oedema``, 2 ``core`` (a core
inside an oedema shell, with contrasts the network can learn), ``imagesTr``/``labelsTr`` and
held-out ``imagesTs`` with ``labelsTs`` (references for ``attnseg evaluate``).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {"background": 0, "oedema": 1, "core": 2}


def tiny_case(seed: int, shape=(16, 16, 16)) -> tuple[np.ndarray, np.ndarray]:
    """(2, *shape) float32 image with a non-zero 'body', (*shape) uint8 labels 0/1/2."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    c = rng.integers(6, np.array(shape) - 6)
    lab[tuple(slice(int(v) - 4, int(v) + 4) for v in c)] = 1
    lab[tuple(slice(int(v) - 2, int(v) + 2) for v in c)] = 2
    body = np.zeros(shape, bool)
    body[1:-1, 1:-1, 1:-1] = True
    img = np.stack([100 + 30 * lab + rng.normal(0, 5, shape), 50 - 15 * lab + rng.normal(0, 3, shape)])
    img = np.where(body[None], img, 0).astype(np.float32)
    return img, lab


def _save(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))


def make_nnunet(root: Path, n_train: int = 6, n_test: int = 2, shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0),
                name: str = "Dataset001_Tiny") -> Path:
    """nnU-Net v2 dataset (``<case>_000X.nii.gz`` channel files); returns the dataset folder."""
    ds = Path(root) / name
    for i in range(n_train + n_test):
        part = "Tr" if i < n_train else "Ts"
        img, lab = tiny_case(i, shape)
        for c in range(2):
            _save(img[c], ds / f"images{part}" / f"case{i:03d}_{c:04d}.nii.gz", spacing)
        _save(lab, ds / f"labels{part}" / f"case{i:03d}.nii.gz", spacing)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": LABELS, "numTraining": n_train,
        "file_ending": ".nii.gz", "name": name}, indent=1))
    return ds


def make_msd(root: Path, n_train: int = 6, n_test: int = 2, shape=(16, 16, 16), name: str = "Task01_Tiny") -> Path:
    """MSD dataset: both channels in one 4-D file (channels last), dataset.json with modality/labels."""
    ds = Path(root) / name
    training, test = [], []
    for i in range(n_train + n_test):
        part = "Tr" if i < n_train else "Ts"
        img, lab = tiny_case(i, shape)
        _save(np.moveaxis(img, 0, -1), ds / f"images{part}" / f"tiny_{i:03d}.nii.gz")
        _save(lab, ds / f"labels{part}" / f"tiny_{i:03d}.nii.gz")
        if part == "Tr":
            training.append({"image": f"./imagesTr/tiny_{i:03d}.nii.gz", "label": f"./labelsTr/tiny_{i:03d}.nii.gz"})
        else:
            test.append(f"./imagesTs/tiny_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "name": name, "modality": {"0": "T2", "1": "ADC"},
        "labels": {str(v): k for k, v in LABELS.items()}, "numTraining": n_train, "numTest": n_test,
        "training": training, "test": test}, indent=1))
    return ds
