"""CAM / Grad-CAM maps and PNG overlays."""

import pytest
import torch
from torch import nn

from attnseg.attention.cam import class_activation_maps, grad_cam, save_cam_overlays


class Tiny(nn.Module):
    def __init__(self, dims=2, k=3):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, stride=2, padding=1))
        self.head = conv(4, k, 1)

    def forward(self, x):
        return {"out": self.head(self.features(x))}


@pytest.mark.parametrize("dims", [2, 3])
def test_cam_is_head_weighted_features_and_grad_cam_agrees(dims):
    torch.manual_seed(0)
    m = Tiny(dims)
    x = torch.randn(2, 1, *(9, 10, 7)[:dims])
    cams = class_activation_maps(m, x, normalize=False)
    feats = m.features(x)
    w = m.head.weight.flatten(1)
    mode = "bilinear" if dims == 2 else "trilinear"
    expect = nn.functional.interpolate(torch.einsum("kc,bc...->bk...", w, feats), size=x.shape[2:], mode=mode,
                                       align_corners=False)
    torch.testing.assert_close(cams, expect)
    # for a 1×1 head and a summed score, ∂S_k/∂A_c = W_kc everywhere, so Grad-CAM of the
    # head's input = relu(CAM)
    gc = grad_cam(m, x, "features", normalize=False)
    torch.testing.assert_close(gc, nn.functional.interpolate(
        torch.relu(torch.einsum("kc,bc...->bk...", w, feats)), size=x.shape[2:], mode=mode, align_corners=False))
    norm = grad_cam(m, x, "features", target_classes=[2, 0])
    assert norm.shape == (2, 2, *x.shape[2:]) and norm.min() >= 0 and norm.max() <= 1
    assert m.training  # mode restored


def test_grad_cam_on_registered_model_and_errors():
    from attnseg.models import create_model

    torch.manual_seed(1)
    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=3, features=(4, 8))
    x = torch.randn(1, 1, 16, 12)
    maps = grad_cam(model, x, "decoders.0", target_classes=[1])
    assert maps.shape == (1, 1, 16, 12) and float(maps.max()) == pytest.approx(1.0)
    assert class_activation_maps(model, x).shape == (1, 3, 16, 12)
    with pytest.raises(KeyError, match="no layer"):
        grad_cam(model, x, "decoder.99")
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, x, "decoders.0", target_classes=[5])


@pytest.mark.parametrize("dims", [2, 3])
def test_save_overlays_writes_pngs(tmp_path, dims):
    size = (6, 8, 8)[-dims:] if dims == 2 else (6, 8, 8)
    cams = torch.rand(2, *size)
    cams[1, ..., 0] = 5.0  # 3D: every slice has it; argmax picks the first
    paths = save_cam_overlays(torch.randn(1, *size), cams, tmp_path / "o", class_names=["bg", "fg"])
    assert [p.name for p in paths] == ["cam_bg.png", "cam_fg.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match"):
        save_cam_overlays(torch.randn(5, 5), cams, tmp_path)
