"""Seeded ablation statistics: bootstrap CI, Holm, Wilcoxon, per-cell and paired summaries, on tiny numbers."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from attnseg.experiments.ablate import region_clause, verdict_sentence
from attnseg.experiments.ablate_stats import (
    bootstrap_ci,
    case_means,
    cell_stats,
    compare_to_none,
    forest_plot,
    hierarchical_ci,
    holm,
    paired,
    wilcoxon_p,
)


def test_bootstrap_ci_matches_exact_enumeration_and_scipy():
    x = [0.2, 0.5, 0.6, 0.9]
    # all 4^4 equally likely resamples: the exact bootstrap distribution of the mean
    exact = np.array([np.mean(c) for c in itertools.product(x, repeat=4)])
    lo, hi = bootstrap_ci(x, n_boot=200_000, seed=1)
    elo, ehi = np.quantile(exact, [0.025, 0.975])
    assert lo == pytest.approx(elo, abs=0.02) and hi == pytest.approx(ehi, abs=0.02)
    y = np.random.default_rng(0).normal(0.7, 0.1, 25)
    ref = stats.bootstrap((y,), np.mean, n_resamples=20_000, method="percentile", random_state=3).confidence_interval
    lo, hi = bootstrap_ci(y, n_boot=20_000, seed=3)
    assert lo == pytest.approx(ref.low, abs=0.006) and hi == pytest.approx(ref.high, abs=0.006)
    assert bootstrap_ci([0.4, 0.4, 0.4]) == (pytest.approx(0.4), pytest.approx(0.4))
    assert bootstrap_ci([0.3, float("nan")]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_holm_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 -> monotone), 0.5 (x1 = 0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])  # step-down keeps the order monotone
    out = holm([0.01, float("nan"), 0.9])  # NaN does not count as a test
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.9)
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_wilcoxon_is_scipys_and_handles_no_difference():
    d = [0.05, 0.02, -0.01, 0.08, 0.03, 0.04, 0.06, -0.02]
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    # exact distribution by hand: n = 5 all positive, rank sum W- = 0, two-sided p = 2 / 2^5
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert wilcoxon_p([0.0, 0.0]) == 1.0 and wilcoxon_p([]) == 1.0


def per_case(values_by_seed):
    return {s: {f"c{i}": {"dice_mean": v} for i, v in enumerate(vals)} for s, vals in values_by_seed.items()}


def test_cell_stats_mean_sd_over_seeds_ci_over_cases():
    pc = per_case({0: [0.6, 0.8, 0.7], 1: [0.8, 1.0, 0.9]})  # seed means 0.7 and 0.9
    st = cell_stats(pc, "dice_mean", n_boot=20_000)
    assert st["mean"] == pytest.approx(0.8) and st["sd"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert case_means(pc, "dice_mean") == pytest.approx({"c0": 0.7, "c1": 0.9, "c2": 0.8})
    assert st["n_seeds"] == 2 and st["n_cases"] == 3
    assert st["lo"] == pytest.approx(bootstrap_ci([0.7, 0.9, 0.8], n_boot=20_000)[0])
    assert 0.7 - 1e-9 <= st["lo"] < 0.8 < st["hi"] <= 0.9 + 1e-9
    assert cell_stats(per_case({0: [0.5, 0.7]}), "dice_mean")["sd"] == 0.0


def test_paired_comparison_and_holm_over_modules():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 12)
    cells = {
        ("unet", "none"): per_case({0: base, 1: base + 0.01}),
        ("unet", "good"): per_case({0: base + 0.1 + rng.normal(0, 0.01, 12), 1: base + 0.1}),
        ("unet", "same"): per_case({0: base + rng.normal(0, 0.05, 12), 1: base + rng.normal(0, 0.05, 12)}),
    }
    p = paired(cells[("unet", "good")], cells[("unet", "none")], "dice_mean")
    d = np.array(list(case_means(cells[("unet", "good")], "dice_mean").values())) - np.array(
        list(case_means(cells[("unet", "none")], "dice_mean").values()))
    assert p["diff"] == pytest.approx(d.mean()) and p["n"] == 12 and p["wins"] == 12
    assert p["p"] == pytest.approx(stats.wilcoxon(d).pvalue) and p["lo"] > 0
    rows = compare_to_none(cells, "dice_mean")
    assert [r["attention"] for r in rows] == ["good", "same"]
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    assert rows[0]["verdict"] == "better"
    assert rows[1]["verdict"] == "no detectable difference"
    assert verdict_sentence(rows[0]).startswith("better") and f"{rows[0]['diff']:+.3f}" in verdict_sentence(rows[0])
    assert verdict_sentence(rows[1]).startswith("no detectable difference")
    seedy = {**rows[0], "verdict": "no detectable difference", "lo": -0.01}  # consistent over cases, not seeds
    assert "beyond seed-to-seed variation" in verdict_sentence(seedy)
    regions = {"ET": rows[1], "TC": rows[0], "WT": rows[1]}
    assert region_clause(regions) == (f"By region: TC better ({rows[0]['diff']:+.3f} [{rows[0]['lo']:+.3f}, "
                                      f"{rows[0]['hi']:+.3f}]); ET, WT no detectable difference.")
    assert region_clause({}) == ""
    assert "WT consistent over cases but within seed-to-seed variation" in region_clause({"WT": seedy})
    # lower-is-better metrics flip the verdict's direction
    worse = compare_to_none({k: v for k, v in cells.items() if k[1] != "same"}, "dice_mean", higher_is_better=False)
    assert worse[0]["verdict"] == "worse"


def test_hierarchical_ci_adds_seed_noise():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, 15)
    gain = 0.03 + rng.normal(0, 0.02, 15)
    same = hierarchical_ci(np.stack([base + gain] * 3), np.stack([base] * 3), n_boot=20_000)
    # identical seeds: the case bootstrap of the differences
    ref = bootstrap_ci(gain, n_boot=20_000, seed=5)
    assert same[0] == pytest.approx(ref[0], abs=0.004) and same[1] == pytest.approx(ref[1], abs=0.004)
    # seeds that shift every case together (a training-run effect) widen the interval
    shift = np.array([[-0.05], [0.0], [0.05]])
    noisy = hierarchical_ci(base + gain + shift, base + shift[::-1], n_boot=20_000)
    assert noisy[1] - noisy[0] > 2 * (same[1] - same[0])
    assert noisy[0] < 0 < same[0]  # the 0.03 gain is no longer distinguishable from seed noise
    # paired() uses it when both cells have ≥ 2 seeds
    t = {s: {f"c{i}": {"m": v} for i, v in enumerate(row)} for s, row in enumerate(base + gain + shift)}
    c = {s: {f"c{i}": {"m": v} for i, v in enumerate(row)} for s, row in enumerate(base + shift[::-1])}
    assert paired(t, c, "m", n_boot=20_000)["lo"] == pytest.approx(noisy[0], abs=0.004)  # cases in another order


def test_forest_plot_writes_png(tmp_path):
    rows = [{"backbone": "unet", "attention": a, "diff": d, "lo": d - 0.05, "hi": d + 0.05, "p_holm": 0.2,
             "verdict": "no detectable difference"} for a, d in (("cse", 0.01), ("pam", -0.02))]
    path = forest_plot(rows, tmp_path / "f.png", "Δ Dice")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ablate_seeds_with_held_out_cases_cli(tmp_path, capsys):
    """The user's command: ``attnseg ablate --seeds 2 --test-data DIR`` → CI table, paired tests, forest plot."""
    import json

    import nibabel as nib
    import yaml

    from attnseg.cli.main import main
    from attnseg.data.synth import synth_brats_case

    # three phantom cases cut to 40 x 40 x 32 voxels around the tumour (small: fast to train and score)
    data = tmp_path / "data"
    for i in range(3):
        c = synth_brats_case(0, i, 2)
        ctr = np.argwhere(c["seg"] > 0).mean(0).astype(int)
        lo = [int(np.clip(m - s // 2, 0, n - s)) for m, s, n in zip(ctr, (40, 40, 32), c["seg"].shape)]
        sl = tuple(slice(a, a + s) for a, s in zip(lo, (40, 40, 32)))
        d = data / f"BraTS20_Synth_{i + 1:03d}"
        d.mkdir(parents=True)
        for name, arr in [*c["images"].items(), ("seg", c["seg"])]:
            cut = np.zeros_like(arr[sl])  # a 2-voxel empty border, as around a skull-stripped brain
            cut[2:-2, 2:-2, 2:-2] = arr[sl][2:-2, 2:-2, 2:-2]
            nib.save(nib.Nifti1Image(cut, c["affine"]), str(d / f"{d.name}_{name}.nii.gz"))
    test = data  # the machinery, not a fair test set: the held-out folder may be any BraTS folder
    cfg = {
        "device": "cpu",
        "task": {"kind": "brats-regions", "num_classes": 4, "in_channels": 4},
        "model": {"kwargs": {"in_channels": 4, "out_channels": 4, "features": [4, 8]}},
        "data": {"root": str(data), "layout": "brats", "val_fraction": 0.34, "patch_size": [16, 16, 16],
                 "batch_size": 1, "augmentation": {"p_deform": 0.0}},
        "train": {"epochs": 1, "iterations_per_epoch": 1,
                  "schedule": {"name": "warmup_cosine", "warmup_epochs": 0, "flat_epochs": 1}},
        "loss": {"deep_supervision": {"enabled": False}, "prior": {"enabled": False}},
        "validation": {"interval": 1, "roi_size": [32, 32, 32], "max_cases": 1, "overlap": 0.0},
        "log": {"tensorboard": False, "curves": False},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "abl"
    assert main(["ablate", "--config", str(tmp_path / "a.yaml"), "--backbones", "unet", "--attention", "none,cse",
                 "--seeds", "2", "--test-data", str(test), "--out", str(out)]) == 0
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(recs) == {f"unet__{a}__s{s}" for a in ("none", "cse") for s in (0, 1)}
    for r in recs.values():
        assert set(r["per_case"]) == {"BraTS20_Synth_001", "BraTS20_Synth_002", "BraTS20_Synth_003"}
        m = r["per_case"]["BraTS20_Synth_002"]
        assert m["dice_mean"] == pytest.approx(np.mean([m["dice_ET"], m["dice_TC"], m["dice_WT"]]))
        assert r["gflops"] > 0 and r["seconds_per_iteration"] > 0
    assert recs["unet__cse__s0"]["gflops"] >= recs["unet__none__s0"]["gflops"]
    page = (out / "ablation.md").read_text()
    assert "95 % bootstrap CI" in page and "Paired comparisons" in page and "(forest.png)" in page
    assert (out / "forest.png").read_bytes()[:4] == b"\x89PNG"
    # the table's numbers are the statistics of the records
    pcs = {s: recs[f"unet__none__s{s}"]["per_case"] for s in (0, 1)}
    st = cell_stats(pcs, "dice_mean")
    row = next(line for line in page.splitlines() if line.startswith("| unet | none |") and "±" in line)
    assert f"{st['mean']:.3f} ± {st['sd']:.3f} [{st['lo']:.3f}, {st['hi']:.3f}]" in row
    comp = next(line for line in page.splitlines() if line.startswith("| dice_mean | unet | cse |"))
    pr = paired({s: recs[f"unet__cse__s{s}"]["per_case"] for s in (0, 1)}, pcs, "dice_mean")
    assert f"{pr['diff']:+.3f}" in comp and "| 3 |" in comp
    sentence = next(line for line in page.splitlines() if line.startswith("- **unet + cse**"))
    assert f"{pr['diff']:+.3f}" in sentence and any(v in sentence for v in ("better", "worse", "no detectable"))
    # --table-only: nothing trained, the page lists the unfinished cells
    (out / "cells" / "unet__cse__s1.json").unlink()
    assert main(["ablate", "--config", str(tmp_path / "a.yaml"), "--backbones", "unet", "--attention", "none,cse",
                 "--seeds", "2", "--test-data", str(test), "--out", str(out), "--table-only"]) == 0
    assert not (out / "cells" / "unet__cse__s1.json").exists()
    page = (out / "ablation.md").read_text()
    assert "Not finished (1 of 4 cells):** unet__cse__s1" in page
    row = next(line for line in page.splitlines() if line.startswith("| unet | cse |") and "±" in line)
    assert row.rstrip(" |").endswith("1")  # the cse row now has one seed
