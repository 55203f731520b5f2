"""The results as markdown: the full tables (``--markdown``), the verdicts against the targets and
the training table between the peers markers of a README (``--readme``)."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

import robustlab

from .common import PEERS, Spec
from .timing import Cell


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def machine_info(peers: dict[str, str]) -> list[str]:
    """CPU, load average (call it at the start), versions: the first lines of every report."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores; load average at start {load_average()}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); Python {platform.python_version()}",
        f"- robustlab {robustlab.__version__}; " + "; ".join(f"{k} {v}" for k, v in peers.items()),
    ]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _rows(all_res: dict, specs):
    """``(model title, its results, its cells, spec)`` for every model and attack."""
    for mname, res in all_res.items():
        for spec in specs:
            yield mname, res, res["cells"], spec


def fmt_s(v: float) -> str:
    return "-" if v != v else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _floor_x(c: Cell, spec: Spec, res: dict, cpu: bool) -> float:
    unit = res["floor_cpu"] if cpu else res["floor_unit"]
    return (c.cpu_median if cpu else c.median) / (spec.k * unit)


def model_tables(name: str, res: dict, specs, libs, mem: dict | None) -> list[str]:
    cells: dict = res["cells"]
    out = [f"### {name}", "", f"{res['desc']}; batch of {res['n']} images, clean accuracy {res['clean']:.3f}; "
           f"one forward+backward on the batch: {res['floor_unit'] * 1000:.1f} ms wall, {res['floor_cpu'] * 1000:.1f} ms CPU "
           f"(medians).", ""]
    out += ["| attack | library | wall s | wall runs | CPU s | robustlab / this (wall, CPU) | x floor (wall, CPU) "
            "| robust acc | in ball | peak extra RSS (MiB) |",
            "|---|---|---:|---|---:|---:|---:|---:|:---:|---:|"]
    for spec in specs:
        rl = cells.get((spec.key, "robustlab"))
        for lib in libs:
            c = cells.get((spec.key, lib))
            if c is None:
                continue
            if c.error:
                out.append(f"| {spec.label} | {lib} | failed | {c.error[:60]} | | | | | | |")
                continue
            ok = rl is not None and rl.times
            ratio = f"{rl.median / c.median:.2f}, {rl.cpu_median / c.cpu_median:.2f}" if ok else "-"
            m = (mem or {}).get(lib, {}).get(spec.key, {})
            if "extra_mib" in m:
                mem_s = f"{m['extra_mib']:.0f}"
            elif c.mem:
                mem_s = f"{statistics.median(c.mem):.0f}"
            else:
                mem_s = "n/a" if not m else "err"
            runs = " ".join(f"{t:.2f}" for t in c.times)
            out.append(
                f"| {spec.label} | {lib} | {fmt_s(c.median)} | {runs} | {fmt_s(c.cpu_median)} | {ratio} "
                f"| {_floor_x(c, spec, res, False):.2f}, {_floor_x(c, spec, res, True):.2f} "
                f"| {c.acc:.3f} | {'yes' if (c.in_ball or spec.key == 'eval') else 'NO'} | {mem_s} |"
            )
    out.append("")
    return out


def summary_table(all_res: dict, specs) -> list[str]:
    out = ["### Against the targets", "",
           "Targets: every attack <= 0.8x the fastest peer's time with robust accuracy <= peer + 0.5 points; "
           "fixed-budget evaluation with early stop >= 3x faster than every peer; attack overhead <= 1.05x the floor. "
           "Verdicts on wall-clock medians and, in brackets, on CPU-time medians (less sensitive to other jobs).",
           "",
           "| model | attack | robustlab wall s | fastest peer | peer wall s | robustlab / peer: wall (CPU) | "
           "robust acc robustlab / peer (pts) | robustlab x floor: wall (CPU) |",
           "|---|---|---:|---|---:|---|---|---|"]
    for mname, res, cells, spec in _rows(all_res, specs):
        rl = cells.get((spec.key, "robustlab"))
        if rl is None or not rl.times:
            continue
        peers = [(lib, cells[(spec.key, lib)]) for lib in PEERS if (spec.key, lib) in cells and cells[(spec.key, lib)].times]
        fw, fc = _floor_x(rl, spec, res, False), _floor_x(rl, spec, res, True)
        if spec.key == "eval":
            fl = f"{fw:.2f} ({fc:.2f}), early stop"
        else:
            fl = f"{fw:.2f} {_verdict(fw <= 1.05)} ({fc:.2f} {_verdict(fc <= 1.05)})"
        if not peers:
            out.append(f"| {mname} | {spec.label} | {fmt_s(rl.median)} | none | | | | {fl} |")
            continue
        lib, best = min(peers, key=lambda p: p[1].median)
        if spec.key == "eval":
            sw = min(c.median for _, c in peers) / rl.median
            sc = min(c.cpu_median for _, c in peers) / rl.cpu_median
            verdict = f"{sw:.1f}x faster {_verdict(sw >= 3)} ({sc:.1f}x {_verdict(sc >= 3)})"
        else:
            rw, rc = rl.median / best.median, rl.cpu_median / best.cpu_median
            verdict = f"{rw:.2f} {_verdict(rw <= 0.8)} ({rc:.2f} {_verdict(rc <= 0.8)})"
        diff = 100 * (rl.acc - best.acc)
        out.append(f"| {mname} | {spec.label} | {fmt_s(rl.median)} | {lib} | {fmt_s(best.median)} | {verdict} | "
                   f"{rl.acc:.3f} / {best.acc:.3f} ({diff:+.1f}) {_verdict(diff <= 0.5)} | {fl} |")
    out.append("")
    return out


def levers_table(all_res: dict, specs, variants) -> list[str]:
    def ratio(c: Cell, base: Cell | None) -> str:
        return f"{c.median / base.median:.2f} ({c.cpu_median / base.cpu_median:.2f})" if base and base.times else "-"

    out = ["### Levers against plain robustlab and torchattacks", "",
           "| model | attack | variant | wall s | CPU s | / robustlab: wall (CPU) | / torchattacks: wall (CPU) "
           "| x floor: wall (CPU) | robust acc (torchattacks) |",
           "|---|---|---|---:|---:|---|---|---|---:|"]
    for mname, res, cells, spec in _rows(all_res, specs):
        base = cells.get((spec.key, "robustlab"))
        ta = cells.get((spec.key, "torchattacks"))
        ta_acc = f" ({ta.acc:.3f})" if ta and ta.times else ""
        for v in variants:
            c = cells.get((spec.key, v))
            if c is None or not c.times or v == "torchattacks":
                continue
            out.append(f"| {mname} | {spec.label} | {v} | {fmt_s(c.median)} | {fmt_s(c.cpu_median)} | {ratio(c, base)} | "
                       f"{ratio(c, ta)} | {_floor_x(c, spec, res, False):.2f} ({_floor_x(c, spec, res, True):.2f}) | "
                       f"{c.acc:.3f}{ta_acc} |")
    out.append("")
    return out


def training_table(name: str, tr: dict) -> list[str]:
    out = [f"### Adversarial training throughput, {name} (batch {tr['batch']}, {tr['steps']} step(s) per run, Adam)", "",
           "| configuration | wall s/step | images/s | x its floor: wall (CPU) |", "|---|---:|---:|---|"]
    med = {k: statistics.median(v) for k, v in tr["times"].items()}
    cpu = {k: statistics.median(v) for k, v in tr["cpu"].items()}
    for cfg, t in med.items():
        fk = f"floor (k={tr['k'][cfg]})"
        fw, fc = med.get(fk, float("nan")), cpu.get(fk, float("nan"))
        out.append(f"| {cfg} | {t:.3f} | {tr['batch'] / t:.0f} | {t / fw:.2f} ({cpu[cfg] / fc:.2f}) |")
    out.append("")
    return out


# ------------------------------------------------------------------------------------------
# the documents
# ------------------------------------------------------------------------------------------
def _command_line(command: str, repeats: int, tail: str) -> list[str]:
    return [f"- command: `{command}`; {repeats} repeats, median reported; {tail}", ""]


def full_report(head: str, machine: list[str], command: str, repeats: int, seconds: float, all_res: dict, specs,
                libs, mems: dict, trains: dict, levers: bool) -> str:
    """Everything (``--markdown``, and printed): per model every library's row, then the verdicts
    against the targets (or with ``levers`` the levers table), then training throughput."""
    lines = [head, "", *machine]
    lines += _command_line(command, repeats, f"total {seconds:.0f} s; load average at end {load_average()}")
    for title, res in all_res.items():
        lines += model_tables(title, res, specs, libs, mems.get(title))
    lines += levers_table(all_res, specs, libs) if levers else summary_table(all_res, specs)
    for title, tr in trains.items():
        lines += training_table(title, tr)
    return "\n".join(lines)


def readme_section(machine: list[str], command: str, repeats: int, all_res: dict, specs, trains: dict) -> str:
    """The README's part (``--readme``): machine, verdicts against the targets, training."""
    lines = [*machine, *_command_line(command, repeats, "full tables: `--markdown FILE`")]
    lines += summary_table(all_res, specs)
    for title, tr in trains.items():
        lines += training_table(title, tr)
    return "\n".join(lines)


def update_readme(path: Path, body: str) -> None:
    """Swap the text between the peers markers of ``path`` for ``body`` (atomically)."""
    begin, end = "<!-- peers:begin -->", "<!-- peers:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    os.replace(tmp, path)
