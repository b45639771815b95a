"""CPU fast-path helpers."""


def test_instance_norm_inplace_matches_instance_norm():
    import torch
    import torch.nn.functional as F

    from attnseg.infer.fastpath import _instance_norm_inplace

    g = torch.Generator().manual_seed(0)
    # a large common offset (E[x²] - E[x]² would lose ~4 digits) and 2.4e5 voxels per map (several blocks)
    x = torch.randn(2, 3, 80, 60, 50, generator=g) * 0.5 + 40.0
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    for weight, bias in ((w, b), (None, None)):
        ref = F.instance_norm(x.double(), weight=None if weight is None else weight.double(),
                              bias=None if bias is None else bias.double(), eps=1e-5).float()
        y = x.clone()
        out = _instance_norm_inplace(y, weight, bias, 1e-5)
        assert out.data_ptr() == y.data_ptr()
        # float32 inputs near 40 are quantised to 3.8e-6, i.e. 7.6e-6 after dividing by the
        # 0.5 std: the same bound holds for F.group_norm (4.8e-6 here)
        torch.testing.assert_close(out, ref, atol=1.5e-5, rtol=0)


def test_prepare_model_normalises_conv_output_in_place_without_grad():
    import copy

    import torch
    from torch import nn

    from attnseg.infer.fastpath import prepare_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.InstanceNorm3d(8, affine=True), nn.ReLU(),
                        nn.Conv3d(8, 2, 1)).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
    fast = prepare_model(copy.deepcopy(net), 3, channels_last=False)
    assert fast[1]._attnseg_inplace and fast[2].inplace
    x = torch.randn(1, 2, 64, 64, 64)  # 8 x 64^3 conv output: above the in-place threshold
    seen = []
    fast[1].register_forward_hook(lambda m, i, o: seen.append(o.data_ptr() == i[0].data_ptr()))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), atol=1e-4, rtol=0)
    assert seen == [True]  # the norm wrote into the conv's output
    # with autograd the ordinary (out-of-place) kernel runs and gradients flow
    xg = x[:, :, :16, :16, :16].clone().requires_grad_()
    fast(xg).sum().backward()
    assert xg.grad is not None and seen[-1] is False
