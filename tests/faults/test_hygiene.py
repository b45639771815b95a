"""Config and checkpoint hygiene: a checkpoint's stored ``model.imports`` are never imported on
``--resume`` or ``predict`` unless given again on the command line; YAML is read with a safe
loader; paths in a manifest are resolved and reported when missing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from attnseg.cli.main import main
from attnseg.models import create_model
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint
from attnseg.train.config import resolve_config
from helpers.faults import PRELUDE, UNET, make_checkpoint, run_script, tiny_config, write_cases

# registers "evil-unet" and leaves a marker file: proof that the module was imported
EVIL = '''
import os
from pathlib import Path
from attnseg.models import MODELS, register_model
from attnseg.models.unet import UNet
Path(os.environ["EVIL_MARK"]).write_text("imported")
if "evil-unet" not in MODELS:
    register_model("evil-unet", family="test")(lambda **kw: UNet(**kw))
'''

_THREE = PRELUDE + """
# resume and predict from the checkpoint, then predict again naming the module on the command line
ckpt, data, out = sys.argv[1:4]
mark = os.environ["EVIL_MARK"]
rc = main(["train", "--resume", ckpt])
print("resume", rc, "evilplug" in sys.modules, os.path.exists(mark))
rc = main(["predict", "-c", ckpt, "-i", data, "-o", out + "1"])
print("predict", rc, "evilplug" in sys.modules, os.path.exists(mark))
rc = main(["predict", "-c", ckpt, "-i", data, "-o", out + "2", "--import", "evilplug"])
print("predict --import", rc, "evilplug" in sys.modules, os.path.exists(mark))
"""


def test_checkpoint_model_imports_are_never_imported_unless_given_again(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "evilplug.py").write_text(EVIL)
    mark = tmp_path / "IMPORTED"
    cfg = resolve_config(tiny_config(tmp_path / "runs", "evil", in_channels=4))
    cfg["model"].update(name="evil-unet", imports=["evilplug"], kwargs=dict(UNET))
    torch.manual_seed(0)
    model = create_model("unet", **UNET)  # the same network under the plugin's name
    ckpt = tmp_path / "evil.pt"
    make_checkpoint(tmp_path / "plain.pt")  # for its task dict
    from attnseg.train.checkpoint import load_checkpoint

    task = load_checkpoint(tmp_path / "plain.pt")["task"]
    save_checkpoint(model_checkpoint("evil-unet", UNET, model.state_dict(), config=cfg, task=task), ckpt)
    write_cases(tmp_path / "data", 1)
    import os

    os.environ["EVIL_MARK"] = str(mark)
    try:
        p = run_script(_THREE, str(ckpt), str(tmp_path / "data"), str(tmp_path / "pred"), extra_path=plugins)
    finally:
        del os.environ["EVIL_MARK"]
    lines = p.stdout.splitlines()
    assert "resume 1 False False" in lines, p.stdout + p.stderr[-3000:]
    assert "predict 1 False False" in lines
    assert "predict --import 0 True True" in lines  # opting in on the command line works
    err = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert err[0] == (f"attnseg train: error: {ckpt}: model 'evil-unet' comes from module(s) ['evilplug'] named in "
                      f"the checkpoint's model.imports, which a checkpoint never imports by itself; if you trust "
                      f"them, pass --set model.imports=[evilplug]")
    assert err[1] == (f"attnseg predict: error: {ckpt}: model 'evil-unet' comes from module(s) ['evilplug'] named "
                      f"in the checkpoint's model.imports, which a checkpoint never imports by itself; if you "
                      f"trust them, pass --import evilplug")
    assert (tmp_path / "pred2" / "Case_000.nii.gz").is_file() and not (tmp_path / "pred1").exists()


def test_yaml_python_tags_are_refused_and_run_nothing(tmp_path, capsys):
    mark = tmp_path / "RAN"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'name: x\nmodel: !!python/object/apply:os.system ["touch {mark}"]\n')
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"attnseg train: error: {cfg}:2:8: refused: the tag !!python/object/apply:os.system asks to "
                   f"run Python code; configs are read with a safe YAML loader (plain values, lists and mappings "
                   f"only)"]
    assert not mark.exists()


def test_manifest_paths_are_resolved_and_a_missing_one_reported(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    for name in ("a.nii.gz", "a_seg.nii.gz"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32 if "seg" not in name else np.uint8), np.eye(4)),
                 data / "imgs" / name)
    (data / "manifest.csv").write_text("image,label\nimgs/a.nii.gz,imgs/a_seg.nii.gz\n"
                                       "imgs/../imgs/b.nii.gz,imgs/a_seg.nii.gz\n")
    monkeypatch.chdir(tmp_path)  # a relative manifest path, as typed
    assert main(["data", "check", "data/manifest.csv", "--layout", "folder"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"attnseg data: error: {data / 'imgs' / 'b.nii.gz'}: image listed in data/manifest.csv "
                   f"(entry 1: 'imgs/../imgs/b.nii.gz') not found"]
