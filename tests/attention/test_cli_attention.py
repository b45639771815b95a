"""``attnseg attention`` lists the registry with parameter counts."""

from attnseg.attention import create_attention
from attnseg.cli.attention import attention_rows
from attnseg.cli.main import main


def test_rows_cover_registry_with_real_counts():
    rows = {r["name"]: r for r in attention_rows(channels=32)}
    assert len(rows) >= 15 and all(r["dims"] == "2D/3D" for r in rows.values())
    assert rows["cse"]["params"] == 32 * 4 + 4 + 4 * 32 + 32  # FC 32 → 4 → 32 with biases
    assert rows["slice"]["params"] == 32 * (2 * 32 * 2 + 2 + 32)  # D=32, r=16 → 2 hidden
    assert rows["ag"]["gated"] == "yes"
    assert rows["pam"]["params"] == sum(p.numel() for p in create_attention("pam", 32, 3, num_slices=32).parameters())


def test_cli_prints_table_and_errors(capsys):
    assert main(["attention", "slice*", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| slice |" in out and "| slice-adaptive |" in out and "pam" not in out
    assert main(["attention", "nothing-like-this"]) == 1
    assert "no attention module" in capsys.readouterr().err
