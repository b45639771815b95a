"""attnseg predict: geometry round trip, label conventions, bad cases, resume, output-folder guard."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from attnseg.cli.main import main
from attnseg.models import create_model
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)

SHAPE = (13, 11, 9)


def oblique_affine() -> np.ndarray:
    a, b = math.radians(20), math.radians(-35)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.9, 1.2, 2.5])
    aff[:3, 3] = [-31.5, 12.25, 7.0]
    return aff


def make_checkpoint(path, et_everywhere: bool = True) -> None:
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8)}
    model = create_model("unet", **kwargs)
    with torch.no_grad():
        # a constant prediction: ET (hence TC and WT) everywhere the network sees, bg channel off
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-10.0, 10.0, 10.0, 10.0] if et_everywhere else [-10.0, -10.0, -10.0, 10.0]))
    task = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": ["t1", "t1ce", "t2", "flair"],
            "label_convention": "brats", "patch_size": [8, 8, 8],
            "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}
    save_checkpoint(model_checkpoint("unet", kwargs, model.state_dict(), task=task), path)


def write_brats_case(root, case_id: str, names=("t1", "t1ce", "t2", "flair"), sep="_", corrupt=False) -> np.ndarray:
    d = root / case_id
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(case_id))
    brain = np.zeros(SHAPE, bool)
    brain[2:11, 3:9, 1:8] = True  # non-zero region: the prediction lives inside it
    hdr = nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = b"attnseg test input"
    for n in names:
        img = np.where(brain, rng.normal(100, 20, SHAPE), 0).astype(np.float32)
        path = d / f"{case_id}{sep}{n}.nii.gz"
        nib.save(nib.Nifti1Image(img, oblique_affine(), header=hdr), path)
        if corrupt:
            path.write_bytes(path.read_bytes()[:40])
    return brain


def test_round_trip_oblique_affine_brats2020(tmp_path):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(ckpt)
    brain = write_brats_case(tmp_path / "data", "Case_001")
    out = tmp_path / "pred"
    assert main(["predict", "-c", str(ckpt), "-i", str(tmp_path / "data"), "-o", str(out), "--save-probs"]) == 0
    img = nib.load(out / "Case_001.nii.gz")
    src = nib.load(tmp_path / "data" / "Case_001" / "Case_001_t1.nii.gz")
    assert img.shape == SHAPE
    assert np.allclose(img.affine, src.affine, atol=1e-5)
    assert img.header["descrip"] == src.header["descrip"]
    lab = np.asarray(img.dataobj)
    # BraTS 2018-2021 convention: ET = 4 inside the non-zero region, background elsewhere
    assert set(np.unique(lab).tolist()) == {0, 4}
    assert np.array_equal(lab == 4, brain)
    probs = nib.load(out / "Case_001_probs.nii.gz")
    assert probs.shape == (*SHAPE, 4) and np.allclose(probs.affine, src.affine, atol=1e-5)
    p = np.asarray(probs.dataobj)
    assert np.allclose(p[brain][:, 1], 1 / (1 + math.exp(-10)), atol=1e-5)
    assert np.all(p[~brain][:, 0] == 1.0)


def test_brats2023_input_gets_brats2023_labels(tmp_path):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(ckpt)
    write_brats_case(tmp_path / "data", "BraTS-GLI-00001-000", names=("t1n", "t1c", "t2w", "t2f"), sep="-")
    out = tmp_path / "pred"
    assert main(["predict", "-c", str(ckpt), "-i", str(tmp_path / "data"), "-o", str(out)]) == 0
    lab = np.asarray(nib.load(out / "BraTS-GLI-00001-000.nii.gz").dataobj)
    assert set(np.unique(lab).tolist()) == {0, 3}


def test_single_4d_file_and_oedema_only(tmp_path):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(ckpt, et_everywhere=False)  # only WT on: oedema = label 2
    rng = np.random.default_rng(0)
    img = rng.normal(5, 1, (*SHAPE, 4)).astype(np.float32)
    f = tmp_path / "in" / "scan.nii.gz"
    f.parent.mkdir()
    nib.save(nib.Nifti1Image(img, oblique_affine()), f)
    out = tmp_path / "pred"
    assert main(["predict", "-c", str(ckpt), "-i", str(f), "-o", str(out), "--tta"]) == 0
    res = nib.load(out / "scan.nii.gz")
    assert res.shape == SHAPE and np.allclose(res.affine, oblique_affine(), atol=1e-5)
    assert np.all(np.asarray(res.dataobj) == 2)


def test_bad_case_continues_and_exit_code_then_resume(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(ckpt)
    data = tmp_path / "data"
    write_brats_case(data, "A_good")
    write_brats_case(data, "B_bad", corrupt=True)
    write_brats_case(data, "C_good")
    out = tmp_path / "pred"
    assert main(["predict", "-c", str(ckpt), "-i", str(data), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "B_bad" in captured.err and "FAILED" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["A_good.nii.gz", "C_good.nii.gz"]
    mtime = (out / "A_good.nii.gz").stat().st_mtime_ns
    assert main(["predict", "-c", str(ckpt), "-i", str(data), "-o", str(out), "--resume"]) == 1
    assert "A_good: exists, skipped" in capsys.readouterr().err
    assert (out / "A_good.nii.gz").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("sub", ["", "Case_001", "Case_001/preds"])
def test_refuses_to_write_into_input_folder(tmp_path, sub, capsys):
    ckpt = tmp_path / "model.pt"
    make_checkpoint(ckpt)
    write_brats_case(tmp_path / "data", "Case_001")
    out = tmp_path / "data" / sub
    assert main(["predict", "-c", str(ckpt), "-i", str(tmp_path / "data"), "-o", str(out)]) == 1
    assert "refusing to write predictions into the input folder" in capsys.readouterr().err
    assert not list((tmp_path / "data").rglob("*preds*"))


def _fake_panet_reference():
    """A PANet-reference checkpoint from the model tests' key table (skip if that file moved)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "models" / "test_convert_panet.py"
    if not path.is_file():
        pytest.skip("tests/models/test_convert_panet.py (fake reference checkpoints) not available")
    spec = importlib.util.spec_from_file_location("_fake_panet", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(0)
    net = {k: torch.randn(shape, generator=g) * 0.2 for k, shape in mod._unet_keys(4).items()}
    return {"net": net, "epoch": 3}


def test_predict_with_panet_reference_checkpoint(tmp_path):
    ckpt = _fake_panet_reference()
    torch.save(ckpt, tmp_path / "ref.pkl")  # plain torch.save, as the reference did
    write_brats_case(tmp_path / "data", "Case_7")
    out = tmp_path / "pred"
    assert main(["predict", "-c", str(tmp_path / "ref.pkl"), "--arch", "unet", "-i", str(tmp_path / "data"),
                 "-o", str(out), "--roi", "32"]) == 0
    res = nib.load(out / "Case_7.nii.gz")
    assert res.shape == SHAPE and np.allclose(res.affine, oblique_affine(), atol=1e-5)
    lab = np.asarray(res.dataobj)
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 4}
