"""attnseg cam on a tiny checkpoint and a tiny BraTS-layout case folder."""

from __future__ import annotations

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

from attnseg.cli.main import main
from attnseg.models import create_model
from attnseg.report.cam import _roi, class_names_of, default_layer
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

SHAPE = (20, 18, 14)
KW = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8, 8)}
TASK = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": ["t1", "t1ce", "t2", "flair"],
        "patch_size": [16, 16, 8], "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    torch.manual_seed(0)
    model = create_model("unet", **KW)
    ck = save_checkpoint(model_checkpoint("unet", KW, model.state_dict(), task=TASK), root / "m.pt")
    case = root / "data" / "BraTS20_X_001"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for mod in ("t1", "t1ce", "t2", "flair"):
        img = np.zeros(SHAPE, np.float32)
        img[2:-2, 2:-2, 2:-2] = rng.normal(100, 10, (16, 14, 10))
        nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 1.5, 1.0])), str(case / f"BraTS20_X_001_{mod}.nii.gz"))
    return {"ck": ck, "case": case, "root": root}


def _valid_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(str(path)).ndim == 3


def test_cam_cli_writes_one_png_per_region(setup, tmp_path, capsys):
    out = tmp_path / "cam"
    assert main(["cam", "-c", str(setup["ck"]), "--case", str(setup["case"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ET, TC, WT" in printed and "[1, 4, 16, 16, 16]" in printed  # patch 16x16x8 padded to 16^3
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["gradcam_ET.png", "gradcam_TC.png", "gradcam_WT.png"]
    for p in out.glob("*.png"):
        _valid_png(p)


def test_cam_cli_class_selection_and_errors(setup, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["cam", "-c", str(setup["ck"]), "--case", str(setup["case"]), "--out", str(out),
                 "--classes", "WT", "--method", "cam"]) == 0
    assert [p.name for p in out.glob("*.png")] == ["cam_WT.png"]
    capsys.readouterr()
    assert main(["cam", "-c", str(setup["ck"]), "--case", str(setup["case"]), "--out", str(out),
                 "--classes", "necrosis"]) == 1
    assert "unknown class 'necrosis'" in capsys.readouterr().err
    assert main(["cam", "-c", str(setup["ck"]), "--case", str(setup["case"]), "--out", str(out),
                 "--layer", "no.such.layer"]) == 1
    assert "no layer 'no.such.layer'" in capsys.readouterr().err
    assert main(["cam", "-c", str(setup["ck"]), "--case", str(setup["root"] / "nope"), "--out", str(out)]) == 1


def test_list_layers_and_default_layer_is_last_executed(setup, capsys):
    assert main(["cam", "-c", str(setup["ck"]), "--case", "x", "--out", "x", "--list-layers"]) == 0
    names = capsys.readouterr().out.split()
    model = create_model("unet", **KW).eval()
    x = torch.zeros(1, 4, 16, 16, 16)
    layer = default_layer(model, x)
    assert layer in names
    # the chosen conv's output has the input's spatial size (finest decoder level)
    seen = {}

    def hook(_m, _i, o):
        seen["s"] = o.shape  # returns None: the output is left unchanged

    h = dict(model.named_modules())[layer].register_forward_hook(hook)
    model(x)
    h.remove()
    assert tuple(seen["s"][2:]) == (16, 16, 16)


def test_roi_crop_centres_on_foreground_and_pads():
    img = np.zeros((1, 30, 20, 10), np.float32)
    img[0, 20:26, 5:9, 2:6] = 1.0  # foreground centre ~ (22.5, 6.5, 3.5)
    patch, lo = _roi(img, (8, 8, 7), multiple=4)
    assert patch.shape == (1, 8, 8, 8)  # 7 padded to 8
    assert lo == (18, 2, 1)  # centre (22.5, 6.5, 3.5) rounded half-to-even, minus half the size
    assert patch.sum() == img.sum()  # the whole foreground is inside
    assert class_names_of({"kind": "brats-regions"}, 4) == ["background", "ET", "TC", "WT"]
    assert class_names_of({}, 3) == ["class0", "class1", "class2"]
