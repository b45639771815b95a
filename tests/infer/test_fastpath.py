"""CPU fast-path helpers (benchmark helpers)."""



def test_drop_emulated_bf16(monkeypatch, capsys):
    from attnseg.infer import fastpath

    names = ["monai", "attnseg", "attnseg-bf16"]
    monkeypatch.setattr(fastpath, "onednn_bf16_supported", lambda: False)
    assert fastpath.drop_emulated_bf16(names) == ["monai", "attnseg"]
    assert "skipped" in capsys.readouterr().out
    assert fastpath.drop_emulated_bf16(names, force=True) == names
    monkeypatch.setattr(fastpath, "onednn_bf16_supported", lambda: True)
    assert fastpath.drop_emulated_bf16(names) == names
