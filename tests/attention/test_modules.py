"""Every registered attention module, generated from the registry: shape, gradients, eval
determinism and ONNX export (onnxruntime output equal to torch)."""

import inspect

import pytest
import torch

from attnseg.attention import ATTENTION, create_attention, get_attention

MODULES = [e.name for e in ATTENTION.entries() if e.tags.get("plugin_test", True)]
SIZES = {2: [(7, 9), (5, 3)], 3: [(7, 9, 5), (5, 3, 7)]}
CH = 8


def build(name, dims, size, **kw):
    entry = get_attention(name)
    params = inspect.signature(entry.fn).parameters
    if "spatial_size" in params:
        kw.setdefault("spatial_size", size)
    # with 8 channels the default reductions leave one hidden unit, which a ReLU can switch
    # off for a given input (then nothing before it gets a gradient); use a few units
    if name.startswith("pam"):
        kw.setdefault("channel_reduction", 2)
    elif "reduction" in params or name == "ksca":
        kw.setdefault("reduction", 2)
    return create_attention(name, CH, dims, **kw)


def inputs(name, batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CH, *size, generator=g)
    if get_attention(name).tags.get("gated"):
        gate = torch.randn(batch, CH, *[(s + 1) // 2 for s in size], generator=g)
        return (x, gate)
    return (x,)


def test_registry_has_at_least_15_modules():
    assert len(ATTENTION.names()) >= 15
    assert all(set(e.dims) == {2, 3} for e in ATTENTION.entries())


# batch 1 at one odd size, batch 2 at another
@pytest.mark.parametrize("batch,size_idx", [(1, 0), (2, 1)])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", MODULES)
def test_shape_gradient_and_eval_determinism(name, dims, batch, size_idx):
    torch.manual_seed(0)
    size = SIZES[dims][size_idx]
    m = build(name, dims, size)
    # parameters that start at zero (residual scales, identity-initialised STN head) would
    # block the gradient of everything before them: give them values first
    # and positive biases so that no ReLU unit of the small excitation MLPs starts dead
    with torch.no_grad():
        for p in m.parameters():
            if p.numel() and not p.abs().sum():
                p.normal_(0, 0.1)
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)) and mod.bias is not None:
                mod.bias.uniform_(0.5, 1.0)
    args = [a.clone().requires_grad_() for a in inputs(name, batch, size)]
    y = m(*args)
    assert y.shape == args[0].shape
    (y * torch.randn_like(y)).sum().backward()
    for a in args:
        assert a.grad is not None and a.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        if p.numel():  # zero-width layers (reference PAM with D < h) have nothing to train
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    m.eval()
    with torch.no_grad():
        a = [t.detach() for t in args]
        torch.testing.assert_close(m(*a), m(*a), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", MODULES)
def test_onnx_matches_torch(name, dims, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    size = SIZES[dims][0]
    m = build(name, dims, size).eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial values everywhere (see above)
            if p.numel() and not p.abs().sum():
                p.normal_(0, 0.1)
    args = inputs(name, 2, size)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, args, str(path), opset_version=20, dynamo=False,
                      input_names=[f"in{i}" for i in range(len(args))])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {f"in{i}": a.numpy() for i, a in enumerate(args)})
    with torch.no_grad():
        ref = m(*args)
    assert abs(torch.from_numpy(out) - ref).max() < 1e-4


@pytest.mark.parametrize("name", MODULES)
def test_works_through_the_plugin(name):
    from attnseg.attention.plugin import AttentionPlugin

    entry = get_attention(name)
    at = ("skip",) if entry.tags.get("gated") else ("encoder",)
    site = "skip" if entry.tags.get("gated") else "encoder"
    plug = AttentionPlugin(name, {}, at)
    mod = plug.build(site, CH, 3, gate_channels=CH, spatial_size=(7, 9, 5))
    args = inputs(name, 2, (7, 9, 5))
    assert mod(*args).shape == args[0].shape
