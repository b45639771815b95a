"""Realistic phantom: determinism per seed, knob ranges, label consistency; easy stays the default."""

import json

import numpy as np
import pytest
import torch

from attnseg.cli.main import main as cli_main
from attnseg.data.readers import find_cases, load_case
from attnseg.data.synth import (
    MODALITIES,
    REALISTIC_KNOBS,
    _draw_realistic,
    _thick_slices,
    realistic_site,
    synth_brats_case,
)

K = REALISTIC_KNOBS


def within(v, key):
    lo, hi = K[key]
    return lo <= v <= hi


def test_knobs_within_their_ranges_and_every_kind_occurs():
    draws = [_draw_realistic(np.random.default_rng([0, i, 7919, 2])) for i in range(300)]
    n_sat = thick = ghosts = bad = remnant = no_et = broken = thin = small = margins = mains_n = 0
    for d in draws:
        mains = [t for t in d["tumours"] if not t["satellite"]]
        sats = [t for t in d["tumours"] if t["satellite"]]
        assert 1 <= len(mains) <= 3 and len(sats) <= 4
        assert within(mains[0]["radius"], "radius_first")
        assert all(within(t["radius"], "radius_other") for t in mains[1:])
        for t in mains:
            assert within(t["oedema"], "oedema_extent") and within(t["fade"], "oedema_fade")
            assert t["broken"] == 0 or within(t["broken"], "broken_fraction")
            if t["necrosis"] > 0:  # the rim thickness is what the knobs say
                rim = (1 - t["necrosis"]) * t["radii"].min()
                assert within(rim, "thin_rim_mm") or within(rim, "rim_mm")
                thin += rim < K["rim_mm"][0]
            broken += t["broken"] > 0
            # the non-enhancing margin stays inside the oedema; its contrast is a fraction of NET's
            if t["margin"] > 0:
                assert t["margin"] <= min(K["margin"][1], t["oedema"] - 1.15)
                assert within(t["margin_contrast"], "margin_contrast")
                margins += 1
            mains_n += 1
        for t in sats:
            assert within(t["radius"], "satellite_radius") and t["necrosis"] == 0 and t["margin"] == 0
            small += 4 / 3 * np.pi * t["radius"] ** 3 < 50
        assert within(d["gain"], "case_gain") and within(d["enhancement"], "enhancement")
        assert within(d["oedema_contrast"], "oedema_contrast") and within(d["rim_heterogeneity"], "rim_heterogeneity")
        assert d["thick_mm"] is None or within(d["thick_mm"], "thick_mm")
        for m in ("t1", "t2", "flair"):
            assert max(map(abs, d["misregistration"][m]["shift_mm"])) <= K["misregistration_mm"]
            assert max(map(abs, d["misregistration"][m]["rot_deg"])) <= K["misregistration_deg"]
        assert d["strip_wobble"] == 0 or within(d["strip_wobble"], "strip_wobble")
        assert not d["remnant"] or d["strip_wobble"] > 0
        assert d["ghost"] is None or within(d["ghost"]["amplitude"], "ghost_amplitude")
        n_sat += len(sats)
        thick += d["thick_mm"] is not None
        ghosts += d["ghost"] is not None
        bad += d["strip_wobble"] > 0
        remnant += d["remnant"]
        no_et += not d["has_et"]
    # the Bernoulli knobs fire at about their probabilities (300 draws: ±4 binomial sd)
    for count, p in ((thick, K["p_thick"]), (ghosts, K["p_ghost"]), (bad, K["p_bad_strip"]),
                     (no_et, K["p_no_et"])):
        assert abs(count - 300 * p) < 4 * np.sqrt(300 * p * (1 - p)) + 1
    p = K["p_margin"]
    assert abs(margins - mains_n * p) < 4 * np.sqrt(mains_n * p * (1 - p)) + 1
    assert abs(n_sat / 300 - K["satellites_mean"]) < 0.25
    assert remnant > 0 and broken > 0 and thin > 0 and small > 0  # sub-50 mm³ satellites exist
    for s in range(K["sites"]):
        site = realistic_site(0, s)
        assert within(site["gain"], "site_gain") and within(site["noise"], "site_noise")
        assert within(site["bias"], "site_bias")
        j = K["site_contrast_jitter"]
        assert all(1 - j <= v <= 1 + j for m in MODALITIES for v in site["contrast"][m])
    assert realistic_site(0, 1) == realistic_site(0, 1) != realistic_site(0, 2)


def test_thick_slices_average_then_interpolate():
    z = torch.arange(30, dtype=torch.float32).repeat(2, 1)  # a linear ramp survives box + linear resampling
    out = _thick_slices(z, 3.0, offset=0.0)
    np.testing.assert_allclose(out[0, 3:-3].numpy(), z[0, 3:-3].numpy(), atol=1e-4)
    step = torch.zeros(1, 30)
    step[0, 15:] = 1
    blurred = _thick_slices(step, 5.0, offset=0.5)[0]
    assert 0 < blurred[15] < 1 and blurred[:8].max() == 0 and blurred[23:].min() == 1  # the edge is smeared


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    assert cli_main(["data", "synth-brats", "--out", str(out), "--cases", "2", "--seed", "3",
                     "--difficulty", "realistic", "--start", "1"]) == 0
    return out


def test_realistic_cases_deterministic_and_labels_consistent(written):
    meta = json.loads((written / "synth_info.json").read_text())
    assert meta["difficulty"] == "realistic"
    for i, case in enumerate(find_cases(written)):
        d = load_case(case)  # validates geometry and the 0/1/2/4 label set
        seg, img = d["label"], d["image"]
        info = meta["cases"][case.case_id]
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg > 0).any()
        # every labelled voxel is imaged (inside the skull-stripped mask) on every sequence
        assert (img[:, seg > 0] > 0).mean() > 0.99
        # label volumes recorded in the info agree with the file
        for v in (1, 2, 4):
            assert info["label_volumes_mm3"][str(v)] == pytest.approx(8.0 * (seg == v).sum())
        if not info["has_et"]:
            assert not (seg == 4).any()
        # the case is a function of (seed, index): regenerate it in memory
        assert case.case_id == f"BraTS20_Synth_{i + 2:03d}"  # --start 1: cases 1 and 2, numbered 002, 003
        again = synth_brats_case(3, i + 1, 2, "realistic")
        np.testing.assert_array_equal(again["seg"], seg)
        np.testing.assert_array_equal(again["images"]["t1ce"], img[1])
        # T1ce: enhancing tumour brighter than oedema; FLAIR: oedema brighter than normal brain
        brain = (img[3] > 0) & (seg == 0)
        if (seg == 4).sum() > 20:
            assert img[1][seg == 4].mean() > 1.2 * img[1][seg == 2].mean()
        assert img[3][seg == 2].mean() > 1.1 * img[3][brain].mean()
    a, b = (load_case(c)["label"] for c in find_cases(written))
    assert not np.array_equal(a, b)


def test_easy_is_the_default_and_unknown_difficulty_fails(tmp_path):
    import inspect

    from attnseg.data.synth import make_synth_brats

    with pytest.raises(ValueError, match="difficulty"):
        synth_brats_case(0, 0, 2, "hard")
    with pytest.raises(ValueError, match="difficulty"):
        make_synth_brats(tmp_path, cases=1, difficulty="hard")
    for f in (synth_brats_case, make_synth_brats):
        assert inspect.signature(f).parameters["difficulty"].default == "easy"
