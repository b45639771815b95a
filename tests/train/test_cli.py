"""`attnseg train` command line: reference aliases, overrides, shipped configs."""

from pathlib import Path

import pytest
import yaml

from attnseg.cli.main import main
from attnseg.train.config import load_yaml, resolve_config
from helpers.tiny import tiny_config, write_brats

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _resolved(capsys, *argv):
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_amis_reference_flags_map_onto_config(capsys, tmp_path):
    # --no-plan: the folder is empty (nothing to plan from); the flags' mapping is what is tested
    cfg = _resolved(capsys, "--no-plan", "--dataroot", str(tmp_path), "--name", "exp1", "--checkpoints_dir", "ck",
                    "--model", "cSEunet3d", "--dataset_mode", "MALC", "--in_channels", "1", "--out_channels", "11",
                    "--gpu_ids", "-1")
    assert cfg["data"]["root"] == str(tmp_path) and cfg["data"]["layout"] == "malc"
    assert cfg["task"]["kind"] == "classes" and cfg["task"]["num_classes"] == 11
    assert cfg["name"] == "exp1" and cfg["output_dir"] == "ck" and cfg["device"] == "cpu"
    assert cfg["model"]["name"] == "cSEunet3d"
    assert cfg["model"]["kwargs"] == {"in_channels": 1, "out_channels": 11}


def test_panet_reference_flags_map_onto_config(capsys):
    cfg = _resolved(capsys, "--config", str(CONFIGS / "panet-brats.yaml"), "--model", "panet", "--patch_test",
                    "--ds", "--trainset", "--mixed", "--out_channels", "4")
    assert cfg["model"]["name"] == "panet" and cfg["model"]["kwargs"] == {"out_channels": 4}  # the common name
    assert cfg["loss"]["deep_supervision"]["enabled"] is True
    assert cfg["data"]["use_all_for_training"] is True and cfg["train"]["precision"] == "mixed"


def test_set_overrides_win_and_unknown_keys_are_rejected(capsys):
    cfg = _resolved(capsys, "--config", str(CONFIGS / "panet-brats.yaml"), "--lr", "0.5",
                    "--set", "train.optimizer.lr=3e-4", "--set", "data.patch_size=[96,96,96]")
    assert cfg["train"]["optimizer"]["lr"] == pytest.approx(3e-4) and cfg["data"]["patch_size"] == [96, 96, 96]
    assert main(["train", "--config", str(CONFIGS / "panet-brats.yaml"), "--set", "train.optimiser.lr=1",
                 "--print-config"]) == 1
    assert "unknown config key 'train.optimiser' (did you mean 'train.optimizer'?)" in capsys.readouterr().err


def test_torchrun_relaunch_command_for_gpu_ids():
    from attnseg.cli.train import _torchrun_argv

    cmd = _torchrun_argv(["train", "--config", "c.yaml", "--gpu_ids", "0,1", "--ds"], 2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "attnseg",
                       "train", "--config", "c.yaml", "--ds"]


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_")),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_resolve_and_name_registered_models(path):
    from attnseg.experiments.ablate import Cell, cell_config
    from attnseg.models import get_model_entry
    from attnseg.train.data import augment_config, preprocess_config
    from attnseg.train.losses import build_training_loss

    raw = load_yaml(path)
    if "ablate" in raw:  # an ablation config: every backbone's cell config must resolve
        raws = [cell_config(raw, Cell(bb, "none", 0), Path("out"), None) for bb in raw["ablate"]["backbone_kwargs"]]
    else:
        raws = [raw]
    for one in raws:
        cfg = resolve_config(one)
        get_model_entry(cfg["model"]["name"])  # raises KeyError for unknown models
        build_training_loss(cfg["loss"], cfg["task"]["kind"])
        augment_config(cfg["data"]["augmentation"])  # every field known to the data pipeline
        preprocess_config(cfg["data"]["preprocess"])
        assert cfg["validation"]["roi_size"] and cfg["name"] != "run"


def test_panet_brats_config_is_the_reference_adam_cfg():
    cfg = resolve_config(load_yaml(CONFIGS / "panet-brats.yaml"))
    opt = cfg["train"]["optimizer"]
    assert (opt["name"], opt["lr"], opt["weight_decay"]) == ("adam", 1e-3, 1e-5)
    s = cfg["train"]["schedule"]
    assert (s["name"], s["warmup_epochs"], s["flat_epochs"], cfg["train"]["epochs"]) == ("warmup_cosine", 5, 35, 100)
    assert cfg["data"]["patch_size"] == [128, 128, 128] and cfg["validation"]["overlap"] == 0.75
    sgd = resolve_config(load_yaml(CONFIGS / "panet-brats-sgd.yaml"))
    assert sgd["train"]["optimizer"]["name"] == "sgd" and sgd["train"]["epochs"] == 300
    assert sgd["task"] == cfg["task"]  # inherited through base:


def test_cli_trains_and_resumes_on_disk_brats(tmp_path, capsys):
    data = write_brats(tmp_path / "brats", 3, seed=1)
    cfg = tiny_config(tmp_path / "runs", "cli", in_channels=4, train__epochs=2, validation__interval=2)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(f), "--dataroot", str(data), "--set", "train.stop_after_epochs=1"]) == 0
    run = tmp_path / "runs" / "cli"
    assert main(["train", "--config", str(f), "--dataroot", str(data)]) == 1  # refuses to overwrite a run
    assert "already holds a run" in capsys.readouterr().err
    # -c without --config: the checkpoint's own config is used
    assert main(["train", "-c", str(run)]) == 0
    assert "resumed from epoch 1" in (run / "log.txt").read_text()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_dice_WT" in rows[0]
    for f in ("config.yaml", "env.json", "checkpoints/last.pt", "checkpoints/best.pt", "log.txt"):
        assert (run / f).is_file(), f
