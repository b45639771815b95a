"""GPU-readiness findings reproduced on the CPU: device mapping under torchrun, reductions on the
backend's device, RNG restore with fewer GPUs (mocked at the state level), parameter-only
cross-rank digests, the DDP unused-parameter probe, the precision and determinism defaults,
and persistent DataLoader workers that see the epoch."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from attnseg.train import distributed as D
from attnseg.train.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from helpers.tiny import tiny_config, tiny_volumes

# ----------------------------------------------------------------------------------------------
# rank -> device


def test_local_rank_maps_to_its_gpu_and_a_rank_without_one_is_refused():
    env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}
    assert D.pick_device("auto", env, cuda_count=2) == torch.device("cuda:1")
    assert D.pick_device("cuda", env, cuda_count=2) == torch.device("cuda:1")
    # two ranks on a one-GPU node: rank 1 would hit "invalid device ordinal" much later
    with pytest.raises(ValueError, match=r"local rank 1 has no GPU: 1 visible .*--nproc_per_node 1"):
        D.pick_device("auto", env, cuda_count=1)
    with pytest.raises(ValueError, match="CUDA is not available"):
        D.pick_device("cuda", env, cuda_count=0)
    assert D.pick_device("auto", env, cuda_count=0) == torch.device("cpu")
    assert D.pick_device("cpu", env, cuda_count=4) == torch.device("cpu")


def test_cuda_n_under_torchrun_is_refused_instead_of_stacking_every_rank_on_one_gpu():
    two = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}
    with pytest.raises(ValueError, match=r"names one GPU, but 2 ranks run on this node"):
        D.pick_device("cuda:1", two, cuda_count=2)
    one = {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "4"}  # one rank per node: fine
    assert D.pick_device("cuda:1", one, cuda_count=2) == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"only 2 GPU\(s\) visible"):
        D.pick_device("cuda:3", {}, cuda_count=2)


# ----------------------------------------------------------------------------------------------
# reductions


@pytest.fixture
def one_rank_group():
    """A one-process group with the given backend string (HashStore: no ports)."""
    made = []

    def make(backend: str):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        made.append(backend)

    yield make
    if made and dist.is_initialized():
        dist.destroy_process_group()


def test_a_gpu_only_backend_rejects_cpu_reductions_so_they_go_where_the_backend_is(one_rank_group):
    # "cuda:gloo" stands for nccl alone on a CPU host: no backend serves CPU tensors, which is
    # exactly how the old trainer died at the end of epoch 1 under torchrun on CUDA
    one_rank_group("cuda:gloo")
    wrong = D.DistInfo(0, 2, 0, torch.device("cpu"))  # world 2 forces the collective
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        D.all_reduce_sum(torch.ones(3), wrong)
    # the trainer's routing: under nccl the tensors go to the rank's GPU; under gloo to the CPU
    assert D.reduce_device(torch.device("cuda:1"), "nccl") == torch.device("cuda:1")
    assert D.reduce_device(torch.device("cuda:1"), "cpu:gloo,cuda:nccl") == torch.device("cuda:1")
    assert D.reduce_device(torch.device("cuda:0"), "gloo") == torch.device("cpu")
    assert D.reduce_device(torch.device("cpu"), "gloo") == torch.device("cpu")
    assert D.backend_for("auto", torch.device("cuda:0")) == "cpu:gloo,cuda:nccl"
    assert D.backend_for("auto", torch.device("cpu")) == "gloo"
    assert D.backend_for("nccl", torch.device("cuda:0")) == "nccl"


def test_the_mixed_backend_serves_cpu_tensors_and_object_collectives(one_rank_group):
    one_rank_group("cpu:gloo,cuda:gloo")  # the shape of auto on CUDA (cpu:gloo,cuda:nccl)
    dd = D.DistInfo(0, 2, 0, D.reduce_device(torch.device("cpu"), "cpu:gloo,cuda:gloo"))
    out = D.all_reduce_sum(torch.tensor([1.5, 2.0], dtype=torch.float32), dd)
    assert out.dtype == torch.float64 and out.tolist() == [1.5, 2.0]  # one rank: the sum is the value
    assert D.any_rank(True, dd) and not D.any_rank(False, dd)


def test_trainer_reductions_hand_the_collective_tensors_on_the_reduce_device(monkeypatch):
    from attnseg.train import step

    seen = []

    def fake_all_reduce(t, op=None):
        seen.append(t.device)
        t.mul_(2)  # two identical ranks

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    dd = D.DistInfo(0, 2, 0, torch.device("cpu"))
    sums = {"loss": torch.tensor(3.0), "main": torch.tensor(1.0, dtype=torch.bfloat16)}
    means = step.reduce_mean(sums, 3, dd)
    assert means == {"loss": pytest.approx(1.0), "main": pytest.approx(1 / 3)}
    assert seen == [dd.reduce_device]


# ----------------------------------------------------------------------------------------------
# RNG state per device


class _FakeCuda:
    """Stands in for torch.cuda's RNG functions: one generator state per device index."""

    def __init__(self, n: int) -> None:
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(n)}
        self.set_calls: list[tuple[torch.Tensor, torch.device]] = []

    def get_rng_state(self, device):
        return self.states[torch.device(device).index].clone()

    def set_rng_state(self, state, device):
        idx = torch.device(device).index
        if idx not in self.states:
            raise IndexError(f"device {idx} not visible")
        self.set_calls.append((state.clone(), torch.device(device)))


def test_rng_state_saves_the_generator_of_the_device_used_and_restores_on_fewer_gpus(monkeypatch, tmp_path):
    saving = _FakeCuda(4)
    monkeypatch.setattr(torch.cuda, "get_rng_state", saving.get_rng_state)
    state = D.rng_state(torch.device("cuda:3"))
    assert state["cuda_device"] == 3 and torch.equal(state["cuda"], saving.states[3])
    # through a checkpoint file (weights_only loading)
    path = tmp_path / "c.pt"
    save_checkpoint(model_checkpoint("unet", {}, {}, rng=state), path)
    state = load_checkpoint(path)["rng"]
    restoring = _FakeCuda(1)  # the job resumes on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "set_rng_state", restoring.set_rng_state)
    D.set_rng_state(state, torch.device("cuda:0"))
    assert len(restoring.set_calls) == 1
    got, dev = restoring.set_calls[0]
    assert dev == torch.device("cuda:0") and torch.equal(got, saving.states[3])


def test_old_checkpoints_with_one_state_per_visible_gpu_restore_on_fewer_gpus(monkeypatch):
    old = D.rng_state(None)
    old["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]  # get_rng_state_all() on 4 GPUs
    fake = _FakeCuda(1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    D.set_rng_state(old, torch.device("cuda:0"))  # set_rng_state_all would raise IndexError here
    assert [int(s[0]) for s, _ in fake.set_calls] == [0]
    two = _FakeCuda(2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", two.set_rng_state)
    old["cuda"] = old["cuda"][:1]  # saved on one GPU, restored by local rank 1
    D.set_rng_state(old, torch.device("cuda:1"))
    assert [(int(s[0]), d.index) for s, d in two.set_calls] == [(0, 1)]


def test_a_cuda_state_resumed_on_cpu_restores_the_rest_and_warns(monkeypatch, caplog):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    state = D.rng_state(None)
    state["cuda"] = torch.zeros(8, dtype=torch.uint8)
    expect = (random.random(), float(np.random.rand()), float(torch.rand(())))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("no CUDA generator on a CPU run"))
    with caplog.at_level(logging.WARNING, logger="attnseg.train"):
        D.set_rng_state(state, torch.device("cpu"))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expect
    assert "CUDA RNG state" in caplog.text


# ----------------------------------------------------------------------------------------------
# cross-rank weight check


def test_digest_covers_parameters_not_batchnorm_statistics():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4))
    b = nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4))
    b.load_state_dict(a.state_dict())
    b.train()(torch.randn(2, 2, 5, 5, 5))  # rank-local running statistics move
    assert not torch.equal(a[1].running_mean, b[1].running_mean)
    assert D.param_digest(a) == D.param_digest(b)  # no false alarm
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0, 0] += 1e-6
    assert D.param_digest(a) != D.param_digest(b)
    c = nn.Conv3d(2, 4, 3).to(memory_format=torch.channels_last_3d)
    c.load_state_dict(a[0].state_dict())
    assert D.param_digest(c) == D.param_digest(_plain_copy(c))  # layout does not change the digest


def _plain_copy(m: nn.Module) -> nn.Module:
    n = nn.Conv3d(2, 4, 3)
    n.load_state_dict({k: v.contiguous() for k, v in m.state_dict().items()})
    return n


# ----------------------------------------------------------------------------------------------
# DDP find_unused_parameters probe


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv3d(1, 2, 1)
        self.norm = nn.BatchNorm3d(2)
        self.unused = nn.Linear(3, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return {"out": self.drop(self.norm(self.used(x))), "aux": self.unused(x.mean((1, 2, 3))[:, :3])}


def test_unused_parameter_probe_finds_them_and_puts_everything_back():
    torch.manual_seed(1)
    m = _Branchy().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    names = D.unused_parameters(m, lambda: m(torch.randn(1, 1, 4, 4, 4))["out"].square().mean())
    assert names == ["unused.weight", "unused.bias"]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BatchNorm stats put back
    assert all(p.grad is None for p in m.parameters())
    # all used: DDP can skip the per-iteration graph traversal
    assert D.unused_parameters(m, lambda: sum(v.float().sum() for v in m(torch.randn(1, 1, 4, 4, 4)).values())) == []


def test_unused_parameter_probe_leaves_the_global_rng_where_it_was():
    m = _Branchy().train()
    torch.manual_seed(3)
    D.unused_parameters(m, lambda: m(torch.randn(1, 1, 4, 4, 4))["out"].sum())
    probed = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(probed, torch.rand(4))


# ----------------------------------------------------------------------------------------------
# precision and determinism defaults


def test_precision_auto_is_fp32_on_cpu_and_mixed_on_cuda(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert D.resolve_precision("auto", cpu) == (None, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))  # H100/A100: native bf16
    assert D.resolve_precision("auto", gpu) == (torch.bfloat16, False)
    assert D.inference_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))  # V100: fp16 + scaler
    assert D.resolve_precision("auto", gpu) == (torch.float16, True)
    assert D.inference_precision("auto", gpu) == "fp32"
    assert D.resolve_precision("mixed", gpu) == (torch.float16, True)
    assert D.resolve_precision("mixed", cpu) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 autocast needs CUDA"):
        D.resolve_precision("fp16", cpu)
    # the predictor (fp32/bf16 only) gets a precision it accepts whatever training used
    assert [D.inference_precision(p, cpu) for p in ("fp32", "bf16", "fp16", "mixed", "auto")] == \
        ["fp32", "bf16", "fp32", "bf16", "fp32"]


def test_determinism_flags_and_their_restoration():
    prev = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    assert D.deterministic_for("auto", torch.device("cpu")) is True
    assert D.deterministic_for("auto", torch.device("cuda:0")) is False
    saved = D.configure_determinism(True, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    D.restore_determinism(saved)
    saved = D.configure_determinism(False, torch.device("cuda:0"))
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    D.restore_determinism(saved)
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == prev


# ----------------------------------------------------------------------------------------------
# persistent workers


class _EpochEcho(torch.utils.data.Dataset):
    """Item ``i`` of epoch ``e`` is ``100·e + i`` (a pure function of (epoch, index), as PatchDataset)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(100 * self.epoch + i)


class _Plan:
    def __init__(self, ds):
        self.ds = ds

    def set_epoch(self, e):
        self.ds.set_epoch(e)

    def __iter__(self):
        yield [0, 1]
        yield [2, 3]

    def __len__(self):
        return 2


def test_persistent_workers_see_each_epoch():
    ds = _EpochEcho()
    batches = D.EpochTaggedBatches(_Plan(ds))
    loader = torch.utils.data.DataLoader(D.EpochTagged(ds), batch_sampler=batches, num_workers=1,
                                         persistent_workers=True)
    seen = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        seen.append([b.tolist() for b in loader])
    assert seen == [[[0, 1], [2, 3]], [[100, 101], [102, 103]], [[200, 201], [202, 203]]]
    # a plain set_epoch in the main process would not have reached the worker's copy
    ds.set_epoch(0)
    stale = torch.utils.data.DataLoader(ds, batch_sampler=_Plan(ds), num_workers=1, persistent_workers=True)
    list(stale)
    ds.set_epoch(1)
    assert [b.tolist() for b in stale] == [[0, 1], [2, 3]]


@pytest.mark.slow
def test_training_with_a_persistent_worker_equals_training_in_process(tmp_path):
    from attnseg.train.trainer import run_training

    vols = (tiny_volumes(3, 0), tiny_volumes(1, 1))
    over = dict(train__epochs=2, validation__interval=2)
    a = run_training(tiny_config(tmp_path, "w0", data__workers=0, **over), volumes=vols)
    b = run_training(tiny_config(tmp_path, "w1", data__workers=1, **over), volumes=vols)
    wa = load_checkpoint(a.run_dir / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(b.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]


# ----------------------------------------------------------------------------------------------
# cheap validation on patches


class _Oracle(nn.Module):
    """Region logits (bg, ET, TC, WT) read off input channel 0, which holds the class map."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        c = x[:, 0].round()
        regions = torch.stack([c == 0, c == 3, (c == 1) | (c == 3), c > 0], 1).float()
        return self.sign * self.w * (20 * regions - 10)


def test_patch_validation_scores_an_oracle_one_and_its_opposite_zero():
    from attnseg.train.config import resolve_config
    from attnseg.train.data import Volume
    from attnseg.train.validation import validate_patches

    vols = [Volume(v.case_id, np.stack([v.label.astype(np.float32), v.image[0]]), v.label)
            for v in tiny_volumes(2, 5)]
    cfg = resolve_config(tiny_config(Path("unused"), "p", validation__mode="patches", validation__patches=5,
                                     validation__sw_batch_size=2))
    good = validate_patches(_Oracle(), vols, cfg, torch.device("cpu"), False, D.DistInfo())
    assert good == {"dice_ET": 1.0, "dice_TC": 1.0, "dice_WT": 1.0, "dice_mean": 1.0}
    bad = validate_patches(_Oracle(-1.0), vols, cfg, torch.device("cpu"), False, D.DistInfo())
    assert bad == {"dice_ET": 0.0, "dice_TC": 0.0, "dice_WT": 0.0, "dice_mean": 0.0}


def test_training_with_patch_validation_writes_the_scores(tmp_path):
    from attnseg.train.trainer import run_training

    res = run_training(tiny_config(tmp_path, "pv", train__epochs=2, validation__interval=2,
                                   validation__mode="patches", validation__patches=3),
                       volumes=(tiny_volumes(2, 0), tiny_volumes(2, 1)))
    row = res.history[-1]
    assert {"val_dice_ET", "val_dice_TC", "val_dice_WT", "val_dice_mean"} <= set(row)
    assert 0.0 <= row["val_dice_mean"] <= 1.0 and res.best_epoch == 2


# ----------------------------------------------------------------------------------------------
# deep supervision at the heads' own resolution


@pytest.mark.parametrize("name,kw", [("unet", {"spatial_dims": 3, "in_channels": 2, "out_channels": 4,
                                               "features": [4, 8, 8, 8], "deep_supervision": True}),
                                     ("panet", {"in_channels": 2, "num_classes": 4, "channels": [4, 4, 8, 8, 8],
                                                "deep_supervision": True})])
def test_heads_keep_their_grid_when_the_target_is_downsampled(name, kw):
    from attnseg.models import create_model

    m = create_model(name, **kw).train()
    x = torch.randn(1, 2, 32, 32, 32)
    full = m(x)
    m.ds_native_size = True
    native = m(x)
    levels = sorted(k for k in full if k.startswith("level"))
    assert levels and all(full[k].shape[2:] == x.shape[2:] for k in levels)
    assert all(native[k].shape[2:] < x.shape[2:] for k in levels)  # coarser grids, no upsampling
    assert native["out"].shape == full["out"].shape


def test_training_with_downsampled_targets(tmp_path):
    from attnseg.train.trainer import run_training

    ds = {"enabled": True, "weights": {"out": 1.0, "level2": 1.0, "level1": 1.0}}
    model = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 2, "out_channels": 4,
                                        "features": [4, 8, 8, 8], "deep_supervision": True}}
    vols = (tiny_volumes(2, 0), tiny_volumes(1, 1))
    runs = {mode: run_training(tiny_config(tmp_path, mode, train__epochs=2, validation__interval=2, model=model,
                                           loss__deep_supervision={**ds, "mode": mode}), volumes=vols)
            for mode in ("upsample_logits", "downsample_target")}
    a, b = (runs[m].history[0]["train_loss"] for m in ("upsample_logits", "downsample_target"))
    assert np.isfinite(b) and a != b  # the same first batch, scored against the coarse targets
