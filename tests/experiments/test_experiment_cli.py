"""``robustlab experiment linearity``: writes linearity.json (the rows) and linearity.png, prints a
table; bad input is one error line and exit code 2."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from robustlab.cli import main


def test_linearity_writes_both_files_and_prints_a_table(tmp_path):
    out = tmp_path / "lin"
    r = CliRunner().invoke(main, ["experiment", "linearity", "--out", str(out), "--dims", "10,100", "--eps", "0.05",
                                  "--seed", "1"])
    assert r.exit_code == 0, (r.output, r.exception)
    doc = json.loads((out / "linearity.json").read_text())
    assert doc["settings"]["dims"] == [10, 100] and doc["settings"]["eps"] == 0.05 and doc["settings"]["seed"] == 1
    rows = doc["rows"]
    assert [row["dim"] for row in rows] == [10, 100]
    assert rows[0]["closed_form"] < rows[1]["closed_form"]
    with Image.open(out / "linearity.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    lines = r.output.splitlines()
    assert lines[0].split()[0] == "dim" and [ln.split()[0] for ln in lines[1:3]] == ["10", "100"]
    assert f"{rows[1]['closed_form']:.5f}" in lines[2]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_bad_input_is_one_error_line(tmp_path):
    for args, message in ((["--dims", "10,abc"], "--dims"), (["--dims", "0"], "--dims"), (["--eps", "-1"], "eps"),
                          (["--seed", "-2"], "seed")):
        r = CliRunner().invoke(main, ["experiment", "linearity", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
        assert not (tmp_path / "x").exists()
