"""The attention tests use tiny tensors: one intra-op thread is faster (no fork/join per op)
and keeps them fast when several test workers share the cores. Restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one intra-op thread (the root conftest's ``one_thread``)."""


def _module_and_plain_grads(m, x, g, plain):
    """Gradients (input, then every parameter) of ``m(x)`` (the module, speed-up layer included)
    and of ``plain(x)`` (the same maths written out in plain autograd) for the output gradient ``g``, after
    asserting equal outputs. A parameter that plain autograd leaves unused (``None``) counts
    as zero. Returns ``(module, plain)`` lists to compare pairwise."""
    y = m(x)
    y.backward(g)
    got = [x.grad.clone()] + [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad(set_to_none=True)
    ref = plain(x)
    torch.testing.assert_close(y, ref)
    ref.backward(g)
    return got, [x.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in m.parameters()]


@pytest.fixture
def module_and_plain_grads():
    """:func:`_module_and_plain_grads` for tests that compare a module with its plain definition."""
    return _module_and_plain_grads
