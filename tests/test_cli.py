"""The egproc command: generate → train fudge → check, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import egproc
from egproc import cli


def test_entry_point_is_installed():
    executable = Path(sys.executable).parent / "egproc"
    result = subprocess.run([str(executable), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("generate", "train", "check", "run"):
        assert command in result.stdout


def test_generate_train_check(tmp_path, capsys):
    samples = tmp_path / "samples"
    cli.main(["generate", "--out", str(samples), "--events", "20000", "--seed", "3", "--workers", "1"])
    written = sorted(p.name for p in samples.iterdir())
    assert written == ["data.root", "data2.root", "mc.root"]

    bundle = tmp_path / "fudge"
    cli.main(["train", "fudge", "--data", str(samples / "data.root"), "--mc", str(samples / "mc.root"), "--out", str(bundle), "--name", "cli-fudge", "--provenance", "toy_seed=3", "toy_events=20000"])
    loaded = egproc.load(bundle)
    assert loaded.name == "cli-fudge" and loaded.manifest.method == "fudge"
    provenance = loaded.manifest.provenance
    assert list(provenance["data_files"]) == ["data.root"] and len(provenance["data_files"]["data.root"]) == 64
    assert provenance["toy_seed"] == "3" and provenance["toy_events"] == "20000"

    capsys.readouterr()
    cli.main(["check", str(bundle), str(samples / "mc.root")])
    out = capsys.readouterr().out
    assert "checksums verified" in out and "branches present" in out


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "magic"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err
