"""The timed runs (every library, every attack, alternating) and the peak-memory probes: in the
timing process around every run (``--memory inproc``), or in one fresh subprocess per (model,
library) (``--memory fresh``)."""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import robustlab

from .adapters import Builder, Call
from .common import Spec, floor_passes, freeze, predict


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (robust to other jobs' load)
    robust: list[float] = field(default_factory=list)
    in_ball: bool = True
    mem: list[float] = field(default_factory=list)  # extra resident MiB per run (in-process probe)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    @property
    def acc(self) -> float:
        return statistics.fmean(self.robust) if self.robust else float("nan")


# ------------------------------------------------------------------------------------------
# peak memory
# ------------------------------------------------------------------------------------------
def status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


class MemProbe:
    """Extra resident memory of one call: gc + glibc ``malloc_trim(0)`` (freed heap pages go back
    to the OS), read ``VmRSS``, reset the kernel's high-water mark (``echo 5 >
    /proc/self/clear_refs``), run, read ``VmHWM``. Both steps sit outside the timed region.
    After ``stop`` the KiB read are in ``base`` and ``peak``."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6")
        self._reset_peak()  # raises OSError where the kernel does not allow it
        self.base = self.peak = 0

    @staticmethod
    def _reset_peak() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def start(self) -> None:
        gc.collect()
        self.libc.malloc_trim(0)
        self.base = status_kib("VmRSS")
        self._reset_peak()

    def stop(self) -> float:
        """Extra MiB since ``start``."""
        self.peak = status_kib("VmHWM")
        return (self.peak - self.base) / 1024


def make_probe(mode: str) -> MemProbe | None:
    if mode != "inproc":
        return None
    try:
        return MemProbe()
    except OSError as e:
        print(f"(no peak-memory probe: {e})", file=sys.stderr)
        return None


# ------------------------------------------------------------------------------------------
# timed runs
# ------------------------------------------------------------------------------------------
def prepare_calls(builders: dict[str, Builder], libs, specs, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Build every (attack key, library) call and warm it up once on 8 images. Returns the calls
    and, for those that failed to build or to run, the error."""
    shape, n = tuple(x.shape[1:]), len(x)
    calls: dict[tuple[str, str], Call] = {}
    errors: dict[tuple[str, str], str] = {}
    for spec in specs:
        for lib in libs:
            try:
                fn = builders[lib](spec, model, shape, n)
                if fn is None:
                    continue
                fn(x[:8], y[:8])
                calls[(spec.key, lib)] = fn
            except Exception as e:
                errors[(spec.key, lib)] = f"{type(e).__name__}: {e}"
    return calls, errors


def bench_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, libs: list[str], specs, repeats: int, log,
                builders: dict[str, Builder], probe: MemProbe | None = None) -> dict:
    """Median wall and CPU time of every call over ``repeats`` runs (libraries alternating, their
    order rotated every repeat), the floor measured every repeat, and, outside the timed region,
    robust accuracy and the eps-ball check of every output."""
    freeze(model)
    fns, errors = prepare_calls(builders, libs, specs, model, x, y)
    cells = {(s.key, lib): Cell(error=errors.get((s.key, lib))) for s in specs for lib in libs
             if (s.key, lib) in fns or (s.key, lib) in errors}
    floor_passes(model, x, y, 2)
    floor_unit: list[float] = []
    floor_cpu: list[float] = []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        floor_passes(model, x, y, 10)
        floor_unit.append((time.perf_counter() - t0) / 10)
        floor_cpu.append((time.process_time() - c0) / 10)
        for si, spec in enumerate(specs):
            order = [lib for lib in libs if (spec.key, lib) in fns]
            order = order[r % max(len(order), 1):] + order[: r % max(len(order), 1)]
            for lib in order:
                torch.manual_seed(1000 * r + si)
                if probe:
                    probe.start()
                t0, c0 = time.perf_counter(), time.process_time()
                out = fns[(spec.key, lib)](x, y)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                cell = cells[(spec.key, lib)]
                cell.times.append(dt)
                cell.cpu.append(dc)
                if probe:
                    cell.mem.append(probe.stop())
                if spec.key == "eval":
                    cell.robust.append(float(out))
                else:
                    out = out.to(x.dtype)
                    cell.in_ball &= bool(spec.threat.contains(out, x, tol=1e-4).all())
                    cell.robust.append(float((predict(model, out) == y).float().mean()))
                log(f"  r{r} {spec.key:<9} {lib:<15} {dt:7.3f} s  robust {cell.robust[-1]:.3f}")
    return {"cells": cells, "floor_unit": statistics.median(floor_unit), "floor_runs": floor_unit,
            "floor_cpu": statistics.median(floor_cpu)}


# ------------------------------------------------------------------------------------------
# peak memory, one subprocess per (model, library)
# ------------------------------------------------------------------------------------------
MEMORY_FLAG = "--_memory-worker"  # the entry script's hidden option that runs memory_worker
_MARK = "MEMORY-JSON "


def memory_worker(spec_path: str, builders: dict[str, Builder], specs) -> None:
    """In the fresh subprocess: load the model and batch, warm every attack up, then probe each
    attack once; prints one ``MEMORY-JSON`` line."""
    cfg = json.loads(Path(spec_path).read_text())
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    from safetensors.torch import load_file

    model = freeze(robustlab.load_model(cfg["model"]))
    data = load_file(cfg["data"])
    x, y = data["x"], data["y"]
    specs = [s for s in specs if s.key in cfg["specs"]]
    fns, errors = prepare_calls(builders, [cfg["lib"]], specs, model, x, y)
    out: dict[str, dict] = {key: {"error": err} for (key, _), err in errors.items()}
    try:
        probe = MemProbe()
    except OSError as e:
        out.update({key: {"error": f"cannot reset VmHWM: {e}"} for key, _ in fns})
        fns = {}
    for (key, _), fn in fns.items():
        probe.start()
        torch.manual_seed(0)
        fn(x, y)
        extra = probe.stop()
        out[key] = {"extra_mib": extra, "peak_mib": probe.peak / 1024, "base_mib": probe.base / 1024}
    print(_MARK + json.dumps(out))


def measure_memory(model: nn.Module, x, y, libs, specs: list[Spec] | tuple[Spec, ...], threads: int, tmp: Path, tag: str,
                   log: Callable[[str], None], script: Path) -> dict:
    """Per library: ``{attack key: {"extra_mib", "peak_mib", "base_mib"} or {"error"}}`` (or
    ``{"error"}`` for the whole worker), each library in a fresh ``script MEMORY_FLAG cfg``."""
    robustlab.save_model(model, tmp / f"{tag}-model")
    from safetensors.torch import save_file

    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(tmp / f"{tag}-data.safetensors"))
    results = {}
    for lib in libs:
        cfg = {"model": str(tmp / f"{tag}-model"), "data": str(tmp / f"{tag}-data.safetensors"), "lib": lib,
               "specs": [s.key for s in specs], "threads": threads}
        p = tmp / f"{tag}-{lib}.json"
        p.write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), MEMORY_FLAG, str(p)], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)), None)
        if line is None:
            results[lib] = {"error": (proc.stderr or proc.stdout)[-300:]}
        else:
            results[lib] = json.loads(line[len(_MARK):])
        log(f"  memory {tag} {lib}: {time.perf_counter() - t0:.0f} s")
    return results
