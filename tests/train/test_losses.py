import math

import pytest
import torch
import torch.nn.functional as F

from attnseg.train.losses import (
    CELoss,
    CombinedBoostedLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    PriorLoss,
    build_training_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _two_class_logits():
    # voxel 0: softmax (3/4, 1/4); voxel 1: (1/2, 1/2)
    return torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)


def test_dice_sigmoid_plain_and_squared_by_hand():
    logits = torch.zeros(1, 1, 1, 2)  # p = (0.5, 0.5)
    target = torch.tensor([[[[1.0, 0.0]]]])
    plain = DiceLoss("sigmoid", squared=False, smooth_nr=0, smooth_dr=0)(logits, target)
    squared = DiceLoss("sigmoid", squared=True, smooth_nr=0, smooth_dr=0)(logits, target)
    assert plain.item() == pytest.approx(1 - 2 * 0.5 / 2)  # inter 0.5, Σp + Σt = 2
    assert squared.item() == pytest.approx(1 - 2 * 0.5 / 1.5)  # Σp² + Σt² = 0.5 + 1
    smooth = DiceLoss("sigmoid", squared=False)(logits, target)  # MONAI default smoothing 1e-5
    assert smooth.item() == pytest.approx(1 - (1 + 1e-5) / (2 + 1e-5))


def test_dice_softmax_class_map_by_hand():
    loss = DiceLoss("softmax", smooth_nr=0, smooth_dr=0)(_two_class_logits(), torch.tensor([[[0, 1]]]))
    # class 0: p (3/4, 1/2), t (1, 0) → 1 − 1.5/2.25; class 1: p (1/4, 1/2), t (0, 1) → 1 − 1/1.75
    assert loss.item() == pytest.approx(((1 - 1.5 / 2.25) + (1 - 1 / 1.75)) / 2)
    no_bg = DiceLoss("softmax", include_background=False, smooth_nr=0, smooth_dr=0)(
        _two_class_logits(), torch.tensor([[[0, 1]]]))
    assert no_bg.item() == pytest.approx(1 - 1 / 1.75)


def test_dice_batch_mode_pools_samples():
    logits = torch.zeros(2, 1, 1, 1)  # p = 0.5 everywhere
    target = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    per_sample = DiceLoss("sigmoid", smooth_nr=0, smooth_dr=0)(logits, target)
    pooled = DiceLoss("sigmoid", batch=True, smooth_nr=0, smooth_dr=0)(logits, target)
    assert per_sample.item() == pytest.approx(((1 - 1 / 1.5) + 1.0) / 2)  # sample 2: inter 0 → loss 1
    assert pooled.item() == pytest.approx(1 - 1 / 2)


def test_ce_variants_on_overlapping_target_by_hand():
    logits = torch.tensor([0.0, LN2, 0.0]).view(1, 3, 1, 1)  # softmax (1/4, 1/2, 1/4)
    target = torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1)  # overlapping regions
    assert CELoss("argmax")(logits, target).item() == pytest.approx(LN2)  # argmax → class 1
    assert CELoss("soft")(logits, target).item() == pytest.approx(LN2 + 2 * LN2)  # −log½ − log¼
    sig = torch.sigmoid(logits.flatten())
    bce = -(torch.log(1 - sig[0]) + torch.log(sig[1]) + torch.log(sig[2])) / 3
    assert CELoss("bce")(logits, target).item() == pytest.approx(bce.item(), rel=1e-6)
    assert CELoss("none")(logits, target).item() == 0.0


def test_ce_one_channel_legacy_zero_and_monai_bce():
    logits = torch.tensor([0.3, -1.2]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    legacy = CELoss("argmax")(logits.requires_grad_(), target)
    assert legacy.item() == 0.0
    legacy.backward()  # differentiable zero
    soft = CELoss("soft")(logits, target)
    assert soft.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item())


def test_soft_variant_equals_monai_diceceloss():
    from monai.losses import DiceCELoss as MonaiDiceCE

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, 3, generator=g)
    target = (torch.rand(2, 4, 5, 6, 3, generator=g) > 0.5).float()
    ours = DiceCELoss("sigmoid", squared=True, ce="soft")(logits, target)
    ref = MonaiDiceCE(sigmoid=True, squared_pred=True)(logits, target)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours1 = DiceCELoss("sigmoid", squared=True, ce="soft")(logits[:, :1], target[:, :1])
    ref1 = MonaiDiceCE(sigmoid=True, squared_pred=True)(logits[:, :1], target[:, :1])
    torch.testing.assert_close(ours1, ref1, rtol=1e-6, atol=1e-6)


def test_dice_ce_is_weighted_sum():
    logits = _two_class_logits()
    target = torch.tensor([[[0, 1]]])
    dice = DiceLoss("softmax", squared=False)(logits, target)
    ce = F.cross_entropy(logits, target)
    both = DiceCELoss("softmax", squared=False, ce="argmax", lambda_dice=0.5, lambda_ce=2.0)(logits, target)
    assert both.item() == pytest.approx(0.5 * dice.item() + 2.0 * ce.item())


def test_focal_softmax_and_sigmoid_by_hand():
    logits = _two_class_logits()
    target = torch.tensor([[[0, 1]]])
    # p_t = 3/4 and 1/2
    want = ((0.25**2) * -math.log(0.75) + (0.5**2) * LN2) / 2
    assert FocalLoss(gamma=2)(logits, target).item() == pytest.approx(want)
    alpha = FocalLoss(gamma=2, alpha=[1.0, 3.0])(logits, target)
    assert alpha.item() == pytest.approx(((0.25**2) * -math.log(0.75) + 3 * (0.5**2) * LN2) / 2)
    sig = FocalLoss(gamma=2, activation="sigmoid")(torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]))
    assert sig.item() == pytest.approx(0.25 * LN2)


def test_focal_detached_modulator_changes_gradient_not_value():
    logits = torch.tensor([[[[0.7]], [[-0.2]]]], requires_grad=True)
    target = torch.tensor([[[0]]])
    a = FocalLoss(gamma=2)(logits, target)
    a.backward()
    g_full = logits.grad.clone()
    logits.grad = None
    b = FocalLoss(gamma=2, detach_modulator=True)(logits, target)
    b.backward()
    assert a.item() == pytest.approx(b.item())
    p = torch.softmax(logits.detach(), 1)[0, 0, 0, 0]
    # constant modulator: gradient = (1 − p_t)^γ · d(−log p_t)/dx = (1 − p)^2 · (softmax − onehot)
    ce_grad = torch.softmax(logits.detach(), 1) - torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(logits.grad, (1 - p) ** 2 * ce_grad)
    assert not torch.allclose(g_full, logits.grad)


def test_dice_focal_sum():
    logits, target = _two_class_logits(), torch.tensor([[[0, 1]]])
    want = DiceLoss("softmax")(logits, target) + 0.5 * FocalLoss()(logits, target)
    got = DiceFocalLoss("softmax", lambda_focal=0.5)(logits, target)
    assert got.item() == pytest.approx(want.item())


def test_cbl_dice_plus_class_weighted_ce_and_boosting():
    logits, target = _two_class_logits(), torch.tensor([[[0, 1]]])
    dice = ((1 - (1.5 + 1e-5) / (2.25 + 1e-5)) + (1 - (1 + 1e-5) / (1.75 + 1e-5))) / 2
    ce = (-math.log(0.75) * 1 + LN2 * 3) / (1 + 3)  # weighted mean over voxels
    loss = CombinedBoostedLoss(class_weights=[1.0, 3.0])
    assert loss(logits, target).item() == pytest.approx(dice + ce, rel=1e-6)
    # boosting: d = (0.5, 0.9) for classes 1, 2 → m = 0.45, median = 0.5 → coeff (1, 0.05/0.45)
    loss3 = CombinedBoostedLoss()
    coeff = loss3.feedback([0.5, 0.9])
    torch.testing.assert_close(coeff, torch.tensor([1.0, 0.05 / 0.45]))
    logits3 = torch.zeros(1, 3, 1, 3)
    target3 = torch.tensor([[[0, 1, 2]]])
    want_ce = (0 + LN3 * 1.0 + LN3 * (0.05 / 0.45)) / 3  # background voxels weigh 0
    got = loss3(logits3, target3) - DiceLoss("softmax", batch=True)(logits3, target3)
    assert got.item() == pytest.approx(want_ce, rel=1e-6)


def test_deep_supervision_weights_and_resizing():
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 4, 8, 8, 8, generator=g) > 0.5).float()
    out = torch.randn(2, 4, 8, 8, 8, generator=g)
    lvl = torch.randn(2, 4, 4, 4, 4, generator=g)
    base = DiceLoss("sigmoid", squared=True)
    ds = DeepSupervisionLoss(base, {"out": 1.0, "level1": 0.5})
    total = ds({"out": out, "level1": lvl, "stage1": torch.zeros(2, 1, 8, 8, 8)}, target)
    up = F.interpolate(lvl, size=(8, 8, 8), mode="trilinear", align_corners=False)
    assert total.item() == pytest.approx(base(out, target).item() + 0.5 * base(up, target).item(), rel=1e-6)
    down = DeepSupervisionLoss(base, {"out": 1.0, "level1": 0.5}, mode="downsample_target")
    t_small = target[:, :, ::2, ::2, ::2]  # nearest with factor 2 picks even indices
    want = base(out, target).item() + 0.5 * base(lvl, t_small).item()
    assert down({"out": out, "level1": lvl}, target).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="none of the weighted outputs"):
        DeepSupervisionLoss(base, {"level9": 1.0})({"out": out}, target)


def test_deep_supervision_class_map_target_downsampled():
    target = torch.arange(16).view(1, 4, 4) % 3
    lvl = torch.zeros(1, 3, 2, 2)
    ds = DeepSupervisionLoss(DiceLoss("softmax"), {"out": 1.0}, mode="downsample_target")
    want = DiceLoss("softmax")(lvl, target[:, ::2, ::2])
    assert ds({"out": lvl}, target).item() == pytest.approx(want.item())


def test_prior_loss_and_training_loss_total():
    stage1 = torch.zeros(1, 1, 1, 2)  # p = 0.5
    wt = torch.tensor([[[1.0, 0.0]]])  # (B, *sp) whole-tumour mask
    prior = PriorLoss()(stage1, wt)
    assert prior.item() == pytest.approx(1 - (1 + 1e-5) / (1.5 + 1e-5))
    tl = build_training_loss({"name": "dice_ce", "kwargs": {"squared": True, "ce": "argmax"},
                              "prior": {"enabled": "auto", "weight": 0.5}}, "brats-regions")
    out = torch.zeros(1, 4, 1, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]).view(1, 4, 1, 2)
    total, parts = tl({"out": out, "stage1": stage1}, target, wt)
    main = DiceCELoss("sigmoid", True, "argmax")(out, target)
    assert parts["main"].item() == pytest.approx(main.item())
    assert total.item() == pytest.approx(main.item() + 0.5 * prior.item())
    with pytest.raises(ValueError, match="whole-tumour"):
        tl({"out": out, "stage1": stage1}, target)


def test_build_training_loss_defaults_follow_task():
    reg = build_training_loss({"name": "dice_ce", "kwargs": {}}, "brats-regions")
    assert reg.main.loss.dice.activation == "sigmoid"
    cls = build_training_loss({"name": "dice_ce", "kwargs": {}, "prior": {"enabled": False}}, "classes")
    assert cls.main.loss.dice.activation == "softmax" and cls.prior is None
    with pytest.raises(ValueError, match="unknown loss"):
        build_training_loss({"name": "nope"}, "classes")
