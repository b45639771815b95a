"""``attnseg evaluate --protocol brats2024`` against direct calls of the official BraTS 2024+
package (brats-evaluation, panoptica) on the same files. Runs where ``attnseg[brats]`` is
installed; elsewhere only the one-line message for the missing extra is checked."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest

from attnseg.cli.main import main

HAVE_BRATS = importlib.util.find_spec("brats_evaluation") is not None


def _write(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    cases = ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
    for i, cid in enumerate(cases):
        ref = np.zeros((32, 30, 24), np.uint8)
        ref[6:20, 6:20, 5:15] = 2
        ref[8:16, 8:16, 7:13] = 1
        ref[10:14, 10:14, 8:12] = 3
        ref[24:28, 22:26, 16:20] = 3          # a second, small ET lesion
        pred = np.roll(ref, i, axis=0)
        pred[rng.integers(0, 32), rng.integers(0, 30), rng.integers(0, 24)] = 3  # a false positive
        nib.save(nib.Nifti1Image(ref, np.eye(4)), tmp_path / "ref" / f"{cid}-seg.nii.gz")
        if i < 2:                              # the third case has no prediction: a "missing" case
            nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp_path / "pred" / f"{cid}.nii.gz")
    return cases


@pytest.mark.skipif(not HAVE_BRATS, reason="needs attnseg[brats] (brats-evaluation)")
def test_protocol_brats2024_equals_the_official_package(tmp_path):
    import json

    import brats_evaluation
    from panoptica import Panoptica_Evaluator

    cases = _write(tmp_path)
    out = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out),
                 "--protocol", "brats2024", "--challenge", "GLI"]) == 0
    # the same files through the package directly
    evaluator = Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("gli")))
    direct = {"metrics": [brats_evaluation.evaluate_single_exam(str(tmp_path / "pred" / f"{c}.nii.gz"),
                                                                str(tmp_path / "ref" / f"{c}-seg.nii.gz"), c, evaluator)
                          for c in cases[:2]],
              "missings": [cases[2]]}
    (tmp_path / "direct.json").write_text(json.dumps(direct, indent=4))
    brats_evaluation.parse_seg_results(str(tmp_path / "direct.json"), str(tmp_path / "direct.csv"))
    ours = list(csv.DictReader(open(out / "brats2024_metrics.csv")))
    theirs = list(csv.DictReader(open(tmp_path / "direct.csv")))
    assert len(ours) == len(theirs) == 3 + 3   # 3 cases (one missing) + mean, std, median rows
    assert ours == theirs
    assert json.loads((out / "brats2024_results.json").read_text()) == json.loads(json.dumps(direct))
    assert any(k.startswith("lesionwise_dsc_mean_") for k in ours[0])


@pytest.mark.skipif(HAVE_BRATS, reason="checks the message when attnseg[brats] is missing")
def test_protocol_brats2024_without_the_extra_names_it(tmp_path, capsys):
    _write(tmp_path)
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out",
               str(tmp_path / "ev"), "--protocol", "brats2024"])
    err = capsys.readouterr().err
    assert rc != 0 and "attnseg[brats]" in err and len(err.strip().splitlines()) == 1
