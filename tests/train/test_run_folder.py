"""The run folder: training curves are the report's figures (one implementation), a missing
[report] extra only costs the curves, and a resumed run reads back the rows it wrote."""

from __future__ import annotations

import logging
import sys

from attnseg.train.run_folder import RunFolder, format_row, resolve_resume

ROWS = [{"epoch": 1, "iteration": 4, "train_loss": 1.0, "train_loss_dice": 0.6, "lr": 1e-3},
        {"epoch": 2, "iteration": 8, "train_loss": 0.5, "train_loss_dice": 0.3, "lr": 5e-4,
         "val_dice_WT": 0.7, "val_dice_TC": 0.5, "val_dice_mean": 0.6}]


def _run(tmp_path, curves=True):
    run = RunFolder(tmp_path / "run", True, {"log": {"curves": curves, "tensorboard": False}})
    run.rows = [dict(r) for r in ROWS]
    return run


def test_curves_are_written_by_the_report_figures(tmp_path, monkeypatch):
    from attnseg.report import figures

    calls = []
    real_loss, real_val = figures.plot_loss, figures.plot_validation
    monkeypatch.setattr("attnseg.train.run_folder.plot_loss", lambda rows, p: calls.append(p) or real_loss(rows, p))
    monkeypatch.setattr("attnseg.train.run_folder.plot_validation",
                        lambda rows, p, m: calls.append(p) or real_val(rows, p, m))
    run = _run(tmp_path)
    try:
        run.plot_curves()
    finally:
        run.close()
    assert [p.name for p in calls] == ["loss.png", "val_dice.png"]
    for p in calls:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_report_extra_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = _run(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="attnseg"):
            run.plot_curves()
            run.plot_curves()
    finally:
        run.close()
    msgs = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert msgs == ["matplotlib is not installed (report figures): pip install 'attnseg[report]'; "
                    "training goes on without curves"]
    assert not (tmp_path / "run" / "curves").exists()


def test_rows_read_back_for_a_resume_are_the_rows_written_up_to_that_epoch(tmp_path):
    run = RunFolder(tmp_path / "run", True, {"log": {"curves": False, "tensorboard": False}})
    try:
        for r in ROWS + [{"epoch": 3, "iteration": 12, "train_loss": 0.25, "lr": 1e-4}]:
            run.add_row(dict(r))
    finally:
        run.close()
    again = RunFolder(tmp_path / "run", False, {"log": {"curves": False, "tensorboard": False}})
    again.load_rows(2)
    assert again.rows == ROWS  # ints stay ints, floats floats, empty cells left out; epoch 3 dropped
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,iteration,train_loss,train_loss_dice,lr,val_dice_WT,val_dice_TC,val_dice_mean"


def test_log_line_and_resume_target(tmp_path):
    assert format_row({"epoch": 2, "train_loss": 0.123456, "lr": 1e-3}) == "epoch 2 train_loss 0.1235 lr 0.001"
    assert resolve_resume(None, tmp_path) is None and resolve_resume(False, tmp_path) is None
    assert resolve_resume(True, tmp_path) == resolve_resume("last", tmp_path) == tmp_path / "checkpoints" / "last.pt"
    assert resolve_resume(str(tmp_path), tmp_path / "x") == tmp_path / "checkpoints" / "last.pt"  # a run folder
    assert resolve_resume(tmp_path / "a.pt", tmp_path) == tmp_path / "a.pt"
