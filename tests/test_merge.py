"""`sagelm merge`: never writes over the weights it reads; one-line errors for an --out it cannot use."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO

from sagelm.model import ModelFormatError, merge_into_full

SAGELM = str(REPO / ".venv" / "bin" / "sagelm") if (REPO / ".venv" / "bin" / "sagelm").exists() else "sagelm"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("which", ["base", "thinker"])
def test_out_equal_to_what_merge_reads_is_refused(tmp_path, tone_judge_dir, tiny_full_dir, which):
    import shutil

    base = shutil.copytree(tiny_full_dir, tmp_path / "base")
    thinker = shutil.copytree(tone_judge_dir, tmp_path / "thinker")
    before = {"base": _snapshot(base), "thinker": _snapshot(thinker)}
    target = {"base": base, "thinker": thinker}[which]
    with pytest.raises(ModelFormatError, match="overwrite the weights being read"):
        merge_into_full(thinker, str(base), target / "." if which == "base" else target)
    assert {"base": _snapshot(base), "thinker": _snapshot(thinker)} == before


def test_cli_merge_out_errors_are_one_line(tmp_path, tone_judge_dir, tiny_full_dir):
    (tmp_path / "file").write_text("x")
    for out, part in ((tmp_path / "file", "is a file, not a folder"), (tiny_full_dir, "is --base")):
        args = [SAGELM, "merge", str(tone_judge_dir), "--base", str(tiny_full_dir), "--out", str(out)]
        done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
        assert done.returncode == 1 and lines[-1].startswith("sagelm: error: ") and part in lines[-1], done.stderr
    assert (tmp_path / "file").read_text() == "x"
