"""Phantom generator: geometry, labels, nesting, contrasts, determinism (2 mm, a few cases)."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from attnseg.cli.main import main as cli_main
from attnseg.data.readers import find_cases, load_case
from attnseg.data.synth import MODALITIES, _draw_tumours, brats_grid, synth_brats_case, synth_tissue_case


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert cli_main(["data", "synth-brats", "--out", str(out), "--cases", "2", "--spacing", "2", "--seed", "5"]) == 0
    return out


def region_means(images: dict, seg: np.ndarray) -> dict:
    brain = (images["t1"] > 0) & (seg == 0)
    out = {}
    for m in MODALITIES:
        im = images[m].astype(np.float64)
        out[m] = {k: im[seg == v].mean() if (seg == v).any() else np.nan for k, v in (("NCR", 1), ("ED", 2),
                                                                                      ("ET", 4))}
        out[m]["brain"] = im[brain].mean()
    return out


def test_written_dataset_layout_geometry_and_labels(written):
    cases = find_cases(written)
    assert [c.case_id for c in cases] == ["BraTS20_Synth_001", "BraTS20_Synth_002"]
    assert all(c.label_convention == "brats2020" for c in cases)
    shape, affine = brats_grid(2)
    assert shape == (120, 120, 78)
    for c in cases:
        d = load_case(c)  # also validates shapes, affines, NaN and the 0/1/2/4 label set
        assert d["image"].shape == (4, 120, 120, 78)
        np.testing.assert_allclose(d["affine"], affine)
        assert np.allclose(np.diag(d["affine"])[:3], [-2, -2, 2])
        assert set(np.unique(d["label"])) <= {0, 1, 2, 4} and (d["label"] == 2).any()
        assert (d["image"][:, d["label"] == 0] >= 0).all()
    # 2 mm voxel (i, j, k) covers 1 mm voxels 2i..2i+1: its centre is the mean of their centres
    _, a1 = brats_grid(1)
    np.testing.assert_allclose(affine @ [3, 4, 5, 1], (a1 @ [6, 8, 10, 1] + a1 @ [7, 9, 11, 1]) / 2)
    # determinism: regenerating case 1 of seed 5 in memory gives the written files
    again = synth_brats_case(5, 1, 2)
    np.testing.assert_array_equal(again["seg"], load_case(cases[1])["label"])
    np.testing.assert_array_equal(again["images"]["flair"], load_case(cases[1])["image"][3])


def test_nesting_and_contrasts(written):
    seen: set[int] = set()
    for c in find_cases(written):
        d = load_case(c)
        seg = d["label"]
        images = dict(zip(MODALITIES, d["image"]))
        tc, wt = np.isin(seg, (1, 4)), seg > 0
        if (seg == 4).any():
            # necrosis is enclosed by the enhancing rim, ≥ 2 voxels thick
            assert not (binary_dilation(seg == 1, iterations=2) & ~tc).any()
        # the core is (almost everywhere) surrounded by oedema: WT ⊃ TC with a margin
        ring = binary_dilation(tc) & ~tc
        assert (ring & ~wt).sum() < 0.3 * ring.sum()
        m = region_means(images, seg)
        assert m["t2"]["ED"] > 1.2 * m["t2"]["brain"]  # oedema bright on T2 and FLAIR
        assert m["flair"]["ED"] > 1.4 * m["flair"]["brain"]
        assert m["t1"]["ED"] < m["t1"]["brain"]
        if (seg == 1).any():  # necrosis: dark on T1/T1ce, brighter than oedema on T2, darker on FLAIR
            assert m["t2"]["NCR"] > m["t2"]["ED"]
            assert m["flair"]["NCR"] < m["flair"]["ED"]
            assert m["t1"]["NCR"] < m["t1"]["ED"] and m["t1ce"]["NCR"] < m["t1ce"]["ED"]
        if (seg == 4).any():  # enhancing tumour: bright ring on T1ce
            assert m["t1ce"]["ET"] > 1.6 * max(m["t1ce"]["ED"], m["t1ce"]["brain"])
        seen.update(int(v) for v in np.unique(seg))
    assert seen == {0, 1, 2, 4}


def test_cases_differ_and_no_et_cases_exist(written):
    a, b = (load_case(c) for c in find_cases(written))
    assert not np.array_equal(a["label"], b["label"])
    assert np.abs(a["image"] - b["image"]).mean() > 10
    # about 20 % of cases have no enhancing tumour: find one from the (cheap) tumour draw
    idx = next(i for i in range(50) if not _draw_tumours(np.random.default_rng([3, i, 7919]))[1])
    c = synth_brats_case(3, idx, 2)
    assert not (c["seg"] == 4).any() and (c["seg"] == 1).any() and not c["info"]["has_et"]


def test_tissue_phantom():
    c = synth_tissue_case(0, 0, 2)
    seg, img = c["seg"], c["image"].astype(np.float64)
    assert c["seg"].shape == (120, 120, 78) and set(np.unique(seg)) == {0, 1, 2, 3}
    means = [img[seg == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # T1: CSF < GM < WM
    assert (img[seg == 0] == 0).mean() > 0.95
    assert np.array_equal(synth_tissue_case(0, 0, 2)["seg"], seg)
