"""PAM slice weights as pictures: profiles per level, tumour extent, key slices; cam --slice-weights; report."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from attnseg.attention.slice import ProgressiveAttention, key_slice_mask
from attnseg.cli.main import main
from attnseg.models import create_model
from attnseg.report.slice_weights import case_slice_weights, slice_attention_sites, slice_weight_profiles
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

SHAPE = (24, 20, 20)
KW = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8, 8), "attention": "pam-adaptive",
      "attention_at": ("encoder",)}
TASK = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": ["t1", "t1ce", "t2", "flair"],
        "patch_size": [16, 16, 16], "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sw")
    torch.manual_seed(0)
    model = create_model("unet", **KW)
    ck = save_checkpoint(model_checkpoint("unet", KW, model.state_dict(), task=TASK), root / "m.pt")
    plain_kw = {k: v for k, v in KW.items() if not k.startswith("attention")}
    plain = save_checkpoint(model_checkpoint("unet", plain_kw, create_model("unet", **plain_kw).state_dict(),
                                             task=TASK), root / "plain.pt")
    case = root / "data" / "BraTS20_X_001"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seg = np.zeros(SHAPE, np.uint8)
    seg[8:14, 6:12, 6:12] = 2
    seg[9:12, 7:10, 7:10] = 4
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for mod in ("t1", "t1ce", "t2", "flair"):
        img = np.zeros(SHAPE, np.float32)
        img[2:-2, 2:-2, 2:-2] = rng.normal(100, 10, (20, 16, 16))
        img[seg > 0] += 60
        nib.save(nib.Nifti1Image(img, aff), str(case / f"BraTS20_X_001_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, aff), str(case / "BraTS20_X_001_seg.nii.gz"))
    return {"ck": ck, "plain": plain, "case": case, "model": model, "seg": seg}


def test_profiles_are_the_modules_own_weights_and_masks(setup):
    model = setup["model"].eval()
    sites = slice_attention_sites(model)
    assert sites and all(isinstance(m, ProgressiveAttention) for _, m in sites)
    x = torch.randn(1, 4, 16, 16, 16)
    inputs = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0])) for n, m in sites]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    profiles = slice_weight_profiles(model, x)
    assert [p.name for p in profiles] == [n for n, _ in sites]
    for p, (name, m) in zip(profiles, sites):
        _, s, mask, _ = m.forward_with_masks(inputs[name])  # PAM's own slice weights and key-slice mask
        d = s.shape[-1]
        np.testing.assert_allclose(p.weights, s.reshape(-1, d).mean(0).detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.kept, mask.float().reshape(-1, d).mean(0).numpy())
        assert torch.equal(mask, key_slice_mask(s))
        # slice j of a level with d slices covers input slices [j·16/d, (j+1)·16/d)
        f = 16 / d
        np.testing.assert_allclose(p.positions, (np.arange(d) + 0.5) * f - 0.5)
        assert p.channels == inputs[name].shape[1] and (p.kept > 0).any()
    assert len({len(p.weights) for p in profiles}) > 1  # several levels, several resolutions


def test_case_profile_and_tumour_extent(setup):
    res = case_slice_weights(setup["ck"], setup["case"])
    assert res.case_id == "BraTS20_X_001" and res.profiles
    # the tumour extent along the slice axis counts the labels inside the region, per slice
    wt = res.extent["WT"]
    assert wt.sum() == (setup["seg"] > 0).sum()  # the 16³ region around the brain holds the whole tumour
    assert res.extent["ET"].sum() == (setup["seg"] == 4).sum()
    lab_axis = (setup["seg"] > 0).sum(axis=(1, 2))
    np.testing.assert_array_equal(wt[: len(wt)], np.pad(lab_axis, (0, 16))[res.offset:res.offset + len(wt)])


def test_cam_slice_weights_cli(setup, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["cam", "--checkpoint", str(setup["ck"]), "--case", str(setup["case"]), "--out", str(out),
                 "--slice-weights"]) == 0
    text = capsys.readouterr().out
    assert "slices" in text and "kept" in text
    assert (out / "slice_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a model without slice attention: one clear line
    assert main(["cam", "--checkpoint", str(setup["plain"]), "--case", str(setup["case"]), "--out", str(out),
                 "--slice-weights"]) == 1
    assert "no slice attention" in capsys.readouterr().err


def test_report_has_the_slice_attention_section(setup, tmp_path):
    from attnseg.report.slice_weights import report_slice_weights

    got = report_slice_weights(setup["ck"], setup["case"].parent, ["missing", "BraTS20_X_001"], tmp_path)
    assert got is not None and got[0].name == "slice_weights.png" and "BraTS20_X_001" in got[1]
    assert report_slice_weights(setup["plain"], setup["case"].parent, ["BraTS20_X_001"], tmp_path) is None


def test_fixed_form_falls_back_to_the_training_patch(setup, tmp_path):
    kw = {**KW, "attention": "pam", "input_size": (16, 16, 16)}  # slice FC bound to 16/8/4 slices per level
    torch.manual_seed(0)
    ck = save_checkpoint(model_checkpoint("unet", kw, create_model("unet", **kw).state_dict(), task=TASK),
                         tmp_path / "fixed.pt")
    res = case_slice_weights(ck, setup["case"])
    assert [len(p.weights) for p in res.profiles][:2] == [16, 8]
    adaptive = case_slice_weights(setup["ck"], setup["case"], roi_size=[16, 16, 16])
    assert res.offset == adaptive.offset  # the same tumour-centred 16-slice region
