"""A new user's own data, end to end through the command line, with no YAML (issue #16).

A tiny nnU-Net dataset and a tiny MSD copy of it (2 channels T2/ADC, labels 1 ``oedema`` and
2 ``core`` named in dataset.json): ``attnseg plan``, ``attnseg train --data ... --model unet
--attention pam-adaptive --epochs 2``, ``attnseg predict`` on ``imagesTs``, ``attnseg evaluate``,
``attnseg report``. Each run trains once (module fixture); the checks replay the user's commands.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from attnseg.cli.main import main  # noqa: E402
from helpers.datasets import make_msd, make_nnunet

NAMES = {"oedema", "core"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


@pytest.fixture(scope="module", params=["nnunet", "msd"])
def journey(request, tmp_path_factory):
    """plan → train → predict imagesTs → evaluate → report, as the user typed them."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    ds = make_nnunet(root) if request.param == "nnunet" else make_msd(root)
    old_cwd, old_mask = os.getcwd(), os.umask(0o022)
    os.chdir(root)
    try:
        assert main(["plan", str(ds), "--out", "plans.yaml", "--memory-gb", "8"]) == 0
        assert main(["train", "--data", str(ds), "--model", "unet", "--attention", "pam-adaptive", "--epochs", "2",
                     "--device", "cpu", "--name", "run"]) == 0
        run = root / "runs" / "run"
        assert main(["predict", "-c", str(run / "checkpoints" / "last.pt"), "-i", str(ds / "imagesTs"),
                     "-o", str(run / "predictions")]) == 0
        assert main(["evaluate", "--pred", str(run / "predictions"), "--ref", str(ds / "labelsTs")]) == 0
        assert main(["report", str(run)]) == 0
    finally:
        os.chdir(old_cwd)
        os.umask(old_mask)
    return {"kind": request.param, "ds": ds, "root": root, "run": run}


def test_plan_writes_a_config_from_the_data(journey):
    cfg = yaml.safe_load((journey["root"] / "plans.yaml").read_text())
    assert cfg["task"] == {"kind": "classes", "num_classes": 3, "in_channels": 2, "channel_names": ["T2", "ADC"],
                           "label_names": {1: "oedema", 2: "core"}}
    assert cfg["model"]["kwargs"]["in_channels"] == 2 and cfg["model"]["kwargs"]["out_channels"] == 3
    assert cfg["data"]["layout"] == journey["kind"]
    assert all(p % 2 ** (len(cfg["model"]["kwargs"]["features"]) - 1) == 0 for p in cfg["data"]["patch_size"])
    assert cfg["train"]["schedule"]["name"] == "poly"


def test_train_logs_and_metrics_use_label_names(journey):
    run = journey["run"]
    with open(run / "metrics.csv") as fh:
        cols = next(csv.reader(fh))
    assert {"val_dice_oedema", "val_dice_core"} <= set(cols)
    assert not any(re.fullmatch(r"val_dice_(\d+|ET|TC|WT)", c) for c in cols)  # no BraTS regions, no numbers
    assert "val_dice_oedema" in (run / "log.txt").read_text()
    with open(run / "metrics.csv") as fh:  # background-only patches once gave PAM a 0/0 (NaN loss)
        assert all(np.isfinite(float(r["train_loss"])) for r in csv.DictReader(fh))
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["task"]["kind"] == "classes" and ck["task"]["label_names"] == {1: "oedema", 2: "core"}
    assert ck["model_kwargs"]["attention"] == "pam-adaptive"
    assert (run / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o644  # umask 022


def test_predict_segments_the_held_out_images_only(journey):
    pred = journey["run"] / "predictions"
    held_out = sorted(p.name for p in (journey["ds"] / "labelsTs").iterdir())
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == held_out
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in pred.glob("*.nii.gz"))


def test_evaluate_scores_named_labels_and_records_its_folders(journey):
    ev = journey["run"] / "predictions_evaluation"
    with open(ev / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["region"] for r in rows} == NAMES and len(rows) == 2 * 2
    info = json.loads((ev / "summary.json").read_text())["info"]
    assert info["regions"] == "labels"
    assert info["pred"] == str((journey["run"] / "predictions").resolve())
    assert info["ref"] == str((journey["ds"] / "labelsTs").resolve())
    assert info["data"] == str(journey["ds"].resolve()) and info["subset"] == "Ts"


def test_report_shows_overlays_of_the_test_cases_by_label_name(journey):
    rep = journey["run"] / "report"
    md = (rep / "report.md").read_text()
    assert "overlay_best.png" in md and "overlay left out" not in md and "overlays left out" not in md
    test_ids = {p.name.split(".")[0] for p in (journey["ds"] / "imagesTs").iterdir()}
    test_ids = {re.sub(r"_\d{4}$", "", t) for t in test_ids}
    shown = set(re.findall(r"(?:Best|Median|Worst) case (\S+?):", md))
    assert shown and shown <= test_ids
    assert "oedema" in md and "core" in md


# ------------------------------------------------------------------ the items, replayed
def test_item1_non_brats_data_gets_class_metrics(journey, capsys):
    """`train --dataroot nnraw/Dataset001_X --model unet --in_channels 2 --out_channels 3`."""
    assert main(["train", "--dataroot", str(journey["ds"]), "--model", "unet", "--in_channels", "2",
                 "--out_channels", "3", "--device", "cpu", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"]["kind"] == "classes" and cfg["task"]["label_names"] == {1: "oedema", 2: "core"}


def test_item2_channels_classes_from_the_data_and_set_merges(journey, capsys):
    """No --in_channels/--out_channels; `--set model.kwargs={...}` keeps the other kwargs."""
    assert main(["train", "--data", str(journey["ds"]), "--model", "unet", "--device", "cpu", "--print-config",
                 "--set", "model.kwargs={features: [8, 16]}"]) == 0
    kw = yaml.safe_load(capsys.readouterr().out)["model"]["kwargs"]
    assert kw["features"] == [8, 16] and kw["in_channels"] == 2 and kw["out_channels"] == 3


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item2_too_few_classes_is_one_line_naming_the_label_file(journey, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": {"kind": "classes", "num_classes": 2, "in_channels": 2},
                                   "model": {"name": "unet", "kwargs": {"in_channels": 2, "out_channels": 2,
                                                                       "features": [4, 8]}},
                                   "data": {"patch_size": [8, 8, 8]}, "device": "cpu"}))
    rc = main(["train", "--config", str(cfg), "--data", str(journey["ds"]), "--output-dir", str(tmp_path / "runs"),
               "--name", "few"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "labelsTr" in err and "label value 2" in err
    assert not (tmp_path / "runs" / "few").exists()  # item 9: a failed run leaves no folder behind


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item3_two_epochs_with_the_default_schedule(journey, tmp_path):
    """`--epochs 2` on the default warm-up + flat schedule (no plan) trains."""
    assert main(["train", "--data", str(journey["ds"]), "--no-plan", "--model", "unet", "--in_channels", "2",
                 "--out_channels", "3", "--set", "task.kind=classes", "--set", "model.kwargs.features=[4,8]",
                 "--patch-size", "8", "--epochs", "2", "--device", "cpu", "--val-interval", "0",
                 "--output-dir", str(tmp_path), "--name", "short"]) == 0
    with open(tmp_path / "short" / "metrics.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]


def test_item4_predict_inputs(journey, tmp_path, capsys):
    ck = str(journey["run"] / "checkpoints" / "last.pt")
    ds = journey["ds"]
    held_out = sorted(p.name for p in (ds / "labelsTs").iterdir())
    # the dataset root: the held-out images (imagesTs), not the training ones
    assert main(["predict", "-c", ck, "-i", str(ds), "-o", str(tmp_path / "root")]) == 0
    assert sorted(p.name for p in (tmp_path / "root").glob("*.nii.gz")) == held_out
    assert main(["predict", "-c", ck, "-i", str(ds), "--subset", "train", "-o", str(tmp_path / "tr")]) == 0
    assert len(list((tmp_path / "tr").glob("*.nii.gz"))) == len(list((ds / "labelsTr").iterdir()))
    # a plain folder of image files, and a manifest
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in (ds / "imagesTs").iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    assert main(["predict", "-c", ck, "-i", str(plain), "-o", str(tmp_path / "p_out")]) == 0
    assert sorted(p.name for p in (tmp_path / "p_out").glob("*.nii.gz")) == held_out
    files = sorted((ds / "imagesTs").iterdir())
    groups: dict[str, list[str]] = {}
    for f in files:
        cid = re.sub(r"(_\d{4})?\.nii\.gz$", "", f.name)
        groups.setdefault(cid, []).append(str(f))
    man = tmp_path / "lists" / "manifest.csv"
    man.parent.mkdir()
    man.write_text("case_id,images\n" + "".join(f"{c},{';'.join(v)}\n" for c, v in groups.items()))
    assert main(["predict", "-c", ck, "-i", str(man), "-o", str(tmp_path / "m_out")]) == 0
    assert sorted(p.name for p in (tmp_path / "m_out").glob("*.nii.gz")) == held_out


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item6_checkpoint_errors_are_one_line(journey, tmp_path, capsys):
    text, blob = tmp_path / "notes.pt", tmp_path / "blob.pt"
    text.write_text("hello, not a checkpoint\n")
    blob.write_bytes(bytes(range(7, 250)) * 10)
    bad = tmp_path / "obj.pt"
    torch.save({"args": __import__("argparse").Namespace(a=1)}, bad)
    img = next((journey["ds"] / "imagesTs").iterdir())
    for f in (text, blob, bad):
        for argv in (["predict", "-c", str(f), "-i", str(journey["ds"]), "-o", str(tmp_path / "o")],
                     ["train", "--resume", str(f)],
                     ["export", "-c", str(f), "--format", "torchscript", "-o", str(tmp_path / "m.pt")],
                     ["cam", "-c", str(f), "--case", str(img), "--out", str(tmp_path / "cam")]):
            assert main(argv) == 1, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and str(f) in err, (argv, err)
            assert "weights_only=False" not in err and "add_safe_globals" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item7_missing_modality_bad_label_and_all_failed(journey, tmp_path, capsys):
    ck = str(journey["run"] / "checkpoints" / "last.pt")
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(journey["ds"], ds)
    first, second = sorted({p.name[:-12] for p in (ds / "imagesTs").iterdir()})
    (ds / "imagesTs" / f"{first}_0001.nii.gz").unlink()  # one missing modality
    lab = ds / "labelsTs" / f"{second}.nii.gz"
    import nibabel as nib
    import numpy as np

    img = nib.load(str(lab))
    nib.save(nib.Nifti1Image(np.full(img.shape, 9, np.uint8), img.affine), str(lab))  # a bad label value
    assert main(["predict", "-c", ck, "-i", str(ds), "-o", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"failed: {first}:" in out and "missing channel" in out and "predicted 1 case(s)" in out
    assert (tmp_path / "out" / f"{second}.nii.gz").is_file()
    (ds / "imagesTs" / f"{second}_0001.nii.gz").unlink()
    assert main(["predict", "-c", ck, "-i", str(ds), "-o", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()  # no empty folder when every case fails


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item8_evaluate_default_output_is_per_prediction_folder(journey, tmp_path, capsys):
    run = journey["run"]
    other = run.parent / f"{run.name}_other_predictions"
    other.mkdir(exist_ok=True)
    for f in (run / "predictions").glob("*.nii.gz"):
        (other / f.name).write_bytes(f.read_bytes())
    assert main(["evaluate", "--pred", str(other), "--ref", str(journey["ds"] / "labelsTs")]) == 0
    assert (other.parent / f"{other.name}_evaluation" / "summary.json").is_file()
    first = json.loads((run / "predictions_evaluation" / "summary.json").read_text())["info"]
    assert first["pred"] == str((run / "predictions").resolve())  # the sibling did not overwrite it
    rc = main(["evaluate", "--pred", str(other), "--ref", str(journey["ds"] / "labelsTs"),
               "--out", str(run / "predictions_evaluation")])
    assert rc == 1 and "holds the evaluation of" in capsys.readouterr().err


def test_item9_resume_by_name_and_models(journey, capsys):
    os.chdir(journey["root"])
    try:
        assert main(["train", "--resume", "--name", "run", "--output-dir", "runs", "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["name"] == "run"
    finally:
        os.chdir(Path(__file__).resolve().parents[2])
    assert main(["models", "panet", "--no-params"]) == 0
    assert "prior-attention-net" in capsys.readouterr().out
    assert main(["models", "pam*", "--no-params"]) == 1
    assert "pam-adaptive" in capsys.readouterr().err
    assert main(["models", "unet", "--show"]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "(16, 32, 64, 128, 256)" in out and "attention_at" in out


def test_item9_zoo_never_writes_into_the_current_folder(tmp_path, monkeypatch):
    from attnseg.cli.zoo import default_card_path

    monkeypatch.chdir(tmp_path)
    path = Path(default_card_path())
    assert path.name == "model_zoo.md" and tmp_path not in path.parents
    assert path.parent == Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("journey", ["nnunet"], indirect=True)  # once is enough
def test_item9_ctrl_c_prints_the_resume_command(journey, tmp_path):
    """SIGINT during training: no traceback, the command to continue; that command continues."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "attnseg", "train", "--data", str(journey["ds"]), "--model", "unet",
            "--set", "model.kwargs.features=[4,8]", "--patch-size", "8", "--epochs", "100000", "--val-interval", "0",
            "--device", "cpu", "--output-dir", str(tmp_path), "--name", "long"]
    # a terminal's foreground job takes Ctrl-C; a job started with `&` by a non-interactive shell
    # (a CI runner's background step) inherits SIGINT ignored, and the run would train on
    def sigint_default() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=sigint_default)
    last = tmp_path / "long" / "checkpoints" / "last.pt"
    t0 = time.time()
    # a loaded CI machine may take long to import torch: interrupt only once training runs
    while not last.exists() and time.time() - t0 < 600 and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint after 600 s"
    time.sleep(0.5)
    # far more epochs than can finish here: the run must still be going when the signal comes
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    try:  # a loaded CI machine (two test workers on two cores) may need a while to wind down
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit 300 s after SIGINT; stdout tail:\n{out[-1500:]}\nstderr tail:\n{err[-3000:]}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    cmd = re.search(r"attnseg train --resume (\S+)", err)
    assert cmd and Path(cmd.group(1)) == tmp_path / "long"
    res = subprocess.run([sys.executable, "-m", "attnseg", "train", "--resume", cmd.group(1),
                          "--set", "train.stop_after_epochs=1"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "resumed from epoch" in res.stdout, res.stderr


def test_pam_key_slices_of_equal_weights_are_never_empty():
    """Equal slice weights: the rounded mean of the softmax can exceed every entry; the largest
    slice must stay selected (an empty selection made PAM's descriptor 0/0 on background patches)."""
    from attnseg.attention import create_attention
    from attnseg.attention.slice import key_slice_mask

    w = torch.full((2, 32, 10), 0.37)  # 10 equal slices: the old "p >= mean" selected none
    assert key_slice_mask(w).any(-1).all()
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.zeros(2, 32, 14, 14, 14, requires_grad=True)
        y = create_attention("pam-adaptive", channels=32, spatial_dims=3)(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
