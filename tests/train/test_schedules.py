import math

import pytest
import torch

from attnseg.train.data import EpochPlan
from attnseg.train.schedules import build_optimizer, build_schedule


def _opt(lr=1e-3, name="adam"):
    return build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"name": name, "lr": lr, "weight_decay": 0})


def _reference_warmup_cosine(s, L, epochs, burn_in, burn, lr_max):
    # the reference's CosineAnnealingWithWarmUp, written out independently of the code under test
    W, M, T, lr_min = burn_in * L, burn * L, epochs * L, lr_max / 1000
    if s < W:
        return lr_min + (lr_max - lr_min) * s / W
    if s < W + M:
        return lr_max
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * (s - W - M) / (T - W - M))) / 2


def test_warmup_cosine_matches_reference_formula_at_chosen_steps():
    L, epochs = 10, 10
    opt = _opt(1e-3)
    sch = build_schedule(opt, {"name": "warmup_cosine", "warmup_epochs": 2, "flat_epochs": 3}, L, epochs)
    seen = {0: opt.param_groups[0]["lr"]}
    for s in range(1, 101):
        sch.step()
        seen[s] = opt.param_groups[0]["lr"]
    assert seen[0] == pytest.approx(1e-6)  # s = 0 → lr_min
    for s in (0, 1, 10, 19, 20, 35, 49, 50, 51, 75, 99, 100):
        assert seen[s] == pytest.approx(_reference_warmup_cosine(s, L, epochs, 2, 3, 1e-3), rel=1e-12), s
    assert seen[75] == pytest.approx((1e-3 + 1e-6) / 2)


def test_step_and_poly_schedules():
    opt = _opt(0.002)
    sch = build_schedule(opt, {"name": "step", "step_epochs": 10, "gamma": 0.1}, 5, 80)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(100):
        sch.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[49] == pytest.approx(0.002) and lrs[50] == pytest.approx(0.0002) and lrs[100] == pytest.approx(2e-5)
    opt = _opt(0.01)
    sch = build_schedule(opt, {"name": "poly", "power": 0.9}, 4, 5)
    for _ in range(7):
        sch.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 7 / 20) ** 0.9)


def test_schedule_state_roundtrip_resumes_same_lr():
    opt = _opt()
    sch = build_schedule(opt, {"name": "warmup_cosine", "warmup_epochs": 1, "flat_epochs": 1}, 3, 6)
    for _ in range(7):
        sch.step()
    opt2 = _opt()
    sch2 = build_schedule(opt2, {"name": "warmup_cosine", "warmup_epochs": 1, "flat_epochs": 1}, 3, 6)
    sch2.load_state_dict(sch.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    sch.step()
    sch2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="exceed"):
        build_schedule(_opt(), {"name": "warmup_cosine", "warmup_epochs": 6, "flat_epochs": 5}, 1, 10)


def test_plateau_reduces_after_patience():
    opt = _opt(1.0)
    sch = build_schedule(opt, {"name": "plateau", "patience": 1, "factor": 0.1}, 1, 10)
    for v in (0.5, 0.5, 0.5):
        sch.step_metric(v)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt2 = _opt(1.0)
    sch2 = build_schedule(opt2, {"name": "plateau", "patience": 1, "factor": 0.1}, 1, 10)
    sch2.load_state_dict(sch.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_optimizers():
    p = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(p, {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 5e-4})
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99
    assert isinstance(build_optimizer(p, {"name": "adamw", "lr": 1e-3}), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(p, {"name": "lamb"})


class _Data:
    epoch = None

    def set_epoch(self, e):
        self.epoch = e


def test_epoch_plan_ranks_partition_the_single_process_batches():
    data = _Data()
    single = EpochPlan(data, iterations=3, batch_size=4)
    ranks = [EpochPlan(data, iterations=3, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert single.samples_per_epoch == ranks[0].samples_per_epoch == 12
    for it, (b, r0, r1) in enumerate(zip(single, *ranks)):
        assert b == r0 + r1 == list(range(4 * it, 4 * it + 4)), it
    single.set_epoch(5)
    assert data.epoch == 5 and len(single) == 3


def test_split_is_portable_deterministic_and_disjoint():
    from attnseg.train.data import split_cases

    ids = [f"case{i:02d}" for i in range(10)]
    train, val = split_cases(list(reversed(ids)), 0.2, seed=512)  # listing order does not matter
    assert (train, val) == split_cases(ids, 0.2, seed=512)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_cases(ids, 0.2, seed=1) != (train, val)
    assert split_cases(["a", "b"], 0.01, seed=0)[1] != []  # at least one validation case
