"""Optional dependencies: the core imports without any extra, and a missing extra is one line naming it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from attnseg.cli.main import main
from attnseg.models import MODELS, create_model
from attnseg.runtime.optional import MissingExtraError, require
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

# every package that pyproject.toml lists in an extra (or only for tests/benchmarks), by import name
EXTRA_MODULES = ("matplotlib", "onnx", "onnxscript", "onnxruntime", "tensorboard", "SimpleITK", "nilearn",
                 "monai", "rich", "medpy", "nnunetv2")


def test_require_returns_the_module():
    import json

    assert require("json") is json


def test_missing_module_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import of SimpleITK now raises ImportError
    with pytest.raises(MissingExtraError) as exc:
        require("SimpleITK", feature="reading x.mha")
    msg = str(exc.value)
    assert msg == "SimpleITK is not installed (reading x.mha): pip install 'attnseg[itk]'"
    assert isinstance(exc.value, ImportError)


def test_unknown_module_names_its_distribution():
    with pytest.raises(MissingExtraError, match=r"^attnseg_no_such_pkg is not installed: pip install attnseg_no_such"):
        require("attnseg_no_such_pkg")


def test_cli_export_without_onnx_names_the_extra(tmp_path, monkeypatch, capsys):
    """`attnseg export --format onnx` without the [onnx] extra: exit 1 and one line naming it."""
    entry = MODELS.get("unet")
    kwargs = dict(entry.tags.get("test_kwargs") or {})
    torch.manual_seed(0)
    model = create_model("unet", **kwargs)
    ck = save_checkpoint(model_checkpoint("unet", kwargs, model.state_dict(),
                                          task={"kind": "classes", "patch_size": [16, 16, 16]}), tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnseg export: error: onnx is not installed (ONNX export): pip install 'attnseg[onnx]'"]
    assert not (tmp_path / "m.onnx").exists()


def test_core_imports_without_any_extra():
    """The library and the CLI's parser import with every extra blocked, as in a core-only install."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {EXTRA_MODULES!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {{name}}")
        sys.meta_path.insert(0, Block())
        import attnseg.models, attnseg.attention, attnseg.train, attnseg.infer, attnseg.metrics, attnseg.report
        import attnseg.train.trainer, attnseg.infer.predict, attnseg.infer.export, attnseg.data.synth
        from attnseg.cli.main import build_parser
        build_parser()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("loaded:", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "loaded: []"
