
import pytest
import torch
from torch import nn

from attnseg.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_atomic_save_roundtrip_and_no_temp_left(tmp_path):
    obj = {"model": nn.Linear(3, 2).state_dict(), "epoch": 3, "name": "x"}
    p = save_checkpoint(obj, tmp_path / "sub" / "last.pt")
    back = load_checkpoint(p)
    assert back["epoch"] == 3 and back["name"] == "x"
    torch.testing.assert_close(back["model"]["weight"], obj["model"]["weight"])
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]


def test_overwrite_keeps_old_file_when_write_fails(tmp_path):
    p = save_checkpoint({"epoch": 1}, tmp_path / "c.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, p)
    assert load_checkpoint(p)["epoch"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


def test_code_running_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    p = tmp_path / "broken.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")
