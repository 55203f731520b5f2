"""Progress display: plain lines when stderr is not a terminal, nothing when disabled."""

from __future__ import annotations

from robustlab import progress


def test_plain_lines_off_a_terminal(capsys):
    for _ in progress.bar(range(5), desc="work", unit="batches", interval=0.0):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines, err
    assert lines[-1].startswith("work: done 5/5 batches (100%)")
    assert all(line.startswith("work: at ") for line in lines[:-1]) and len(lines) == 5  # 4 updates + done


def test_interval_limits_the_lines(capsys):
    b = progress.bar(total=1000, desc="eval", unit="images", interval=3600.0)
    for _ in range(10):
        b.update(100)
    b.close()
    assert capsys.readouterr().err.splitlines() == ["eval: done 1000/1000 images (100%), 0s"]


def test_disabled_prints_nothing(capsys):
    for _ in progress.bar(range(3), desc="quiet", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_echo_is_a_plain_line(capsys):
    progress.echo("epoch=1, loss=0.5")
    assert capsys.readouterr().out == "epoch=1, loss=0.5\n"
