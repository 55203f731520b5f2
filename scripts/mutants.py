#!/usr/bin/env python3
"""Hand-written mutation testing (`make mutants`): does the default suite catch plausible bugs?

mutmut / cosmic-ray generate thousands of mutants, far beyond a 2-core budget; instead this keeps
a small table of hand-written mutations, each a plausible bug: (id, candidate files, exact old
text, new text, the targeted tests). For each mutation it copies ``src/`` to a temporary folder,
replaces the old text (first occurrence) in the first candidate file holding it, and runs the
targeted tests (``-m 'not slow'``, as ``make test``) with ``PYTHONPATH`` pointing at the mutated
copy, so the copy is imported instead of the editable install (checked: ``robustlab.__file__``
must lie in the copy, or the mutation is reported as an error). A mutation whose old text is
found in none of its files is reported "not applicable" (the source moved on: update the table).

Usage: python scripts/mutants.py [--only ID[,ID...]] [--list] [--keep] [--src DIR]
Prints one row per mutation: id, tests run, caught / SURVIVED / not applicable, seconds.
Exit status 1 if any mutation survived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Mutation:
    id: str
    files: tuple[str, ...]  # candidates, relative to src/robustlab
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments
    why: str


STORAGE = ("storage/atomic.py", "storage/checkpoint.py", "storage/__init__.py")

MUTATIONS: list[Mutation] = [
    # --- the five of issue 23 -------------------------------------------------------------------
    Mutation("resume-skips-rng", ("training/loop.py",), 'torch.set_rng_state(state["rng"])', "pass",
             ("tests/training/test_resume_rng.py",),
             "resume forgets the global RNG state"),
    Mutation("check-large-eps-always-pass", ("evaluation/checks.py",), "ok = acc <= max_accuracy", "ok = True",
             ("tests/evaluation/test_checks.py", "-k", "each_check"), "large-eps never WARNs"),
    Mutation("check-more-iterations-always-pass", ("evaluation/checks.py",),
             'return check_result("more-iterations", ok, ev, **values), strong',
             'return check_result("more-iterations", True, ev, **values), strong',
             ("tests/evaluation/test_checks.py", "-k", "each_check"), "more-iterations never WARNs"),
    Mutation("check-noise-always-pass", ("evaluation/checks.py",),
             'return _beyond_whitebox("noise", label, model, x, y, threat, attacks, whitebox_robust, scale, tol, batch_size, draws=draws)',
             'return _beyond_whitebox("noise", label, model, x, y, threat, attacks, whitebox_robust, scale, 1.0, batch_size, draws=draws)',
             ("tests/evaluation/test_checks.py", "-k", "each_check"), "noise never WARNs"),
    Mutation("check-eps-monotonic-pgd-always-pass", ("evaluation/checks.py",),
             "rises = [(a, b) for a, b in zip(pts, pts[1:]) if b[1] > a[1] + tol]",
             "rises = [(a, b) for a, b in zip(pts, pts[1:]) if b[1] > a[1] + tol] if curve else []",
             ("tests/evaluation/test_checks.py", "-k", "each_check"), "the PGD-computed eps curve never WARNs"),
    Mutation("guard-restores-top-level-mode-only", ("_torch.py",),
             "        for m, mode in modes:\n            m.training = mode",
             "        model.train(modes[0][1])",
             ("tests/attacks", "-k", "mode or state or guard"), "attacks flip submodules in another mode"),
    Mutation("json-written-in-place", STORAGE, 'atomic_write_bytes(path, text.encode("utf-8"))',
             'Path(path).write_bytes(text.encode("utf-8"))',
             ("tests/system/test_torn_writes.py",), "model.json / history.jsonl / metrics.json / config.json torn by a kill"),
    Mutation("pgd-no-per-step-projection", ("attacks/pgd.py",),
             "            direction, state = self._direction(self._movable(grad, xa), state)\n"
             "            xa = self.threat.project(xa.add(direction, alpha=self.step_size), xs)\n        if keep_final",
             "            direction, state = self._direction(self._movable(grad, xa), state)\n"
             "            xa = self.threat.clip_bounds(xa.add(direction, alpha=self.step_size))\n        if keep_final",
             ("tests/attacks/test_contract.py", "-k", "every_query"),
             "PGD iterates leave the ball (the base class projects the output)"),
    # --- more plausible bugs ----------------------------------------------------------------------
    Mutation("atomic-write-skips-fsync", STORAGE, "            f.flush()\n            os.fsync(f.fileno())",
             "            f.flush()", ("tests/system/test_torn_writes.py",), "new bytes not on disk before the rename"),
    Mutation("atomic-write-no-temp-file", STORAGE,
             'fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)\n    except',
             'fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), str(path)\n    except',
             ("tests/system/test_torn_writes.py",), "write straight into the final name"),
    Mutation("evaluation-per-attack-average", ("evaluation/outcomes.py",),
             "    def robust_accuracy(self) -> float:\n        return float(self.robust.float().mean())",
             "    def robust_accuracy(self) -> float:\n        return min([float((self.clean_correct & o.robust).float().mean()) for o in self.outcomes] or [self.clean_accuracy])",
             ("tests/evaluation/test_worst_case.py", "tests/attacks/test_attacks_strength.py"),
             "robust accuracy = the best single attack, not the per-sample worst case"),
    Mutation("l2-projection-uses-linf-norm", ("threat.py",), 'n = _flat_norm(delta, "l2")', 'n = _flat_norm(delta, "linf")',
             ("tests/attacks/test_attacks_properties.py", "tests/test_threat.py"), "L2 ball projected with the wrong norm"),
    Mutation("check-images-accepts-out-of-bounds", ("validation.py",), "if xmin < lo - 1e-6 or xmax > hi + 1e-6:",
             "if False:", ("tests/attacks/test_hostile.py", "tests/evaluation/test_checks.py", "-k", "validat or bound or hostile"),
             "out-of-bounds images silently attacked"),
    Mutation("fgsm-steps-against-the-gradient", ("attacks/fgsm.py",), "return self.threat.project(x + self._step(grad), x)",
             "return self.threat.project(x - self._step(grad), x)", ("tests/attacks/test_attacks.py",),
             "FGSM descends the loss"),
    Mutation("pgd-early-stop-freezes-before-success", ("attacks/pgd.py",), "keep = ~succ", "keep = ~succ & (loss < loss.max())",
             ("tests/attacks/test_attacks.py", "tests/attacks/test_attacks_properties.py"),
             "early stop drops samples that are not yet adversarial"),
    Mutation("corruption-mean-includes-severity-0", ("evaluation/corruptions.py",),
             "vals = [a for row in table.values() for s, a in row.items() if int(s) != 0]",
             "vals = [a for row in table.values() for s, a in row.items()]",
             ("tests/evaluation/test_corruptions.py",), "mean corruption accuracy counts the clean column"),
    Mutation("iterations-curve-ignores-steps", ("evaluation/curves.py",),
             "a: Attack = build_attack(kind, threat, steps=int(steps), **base)",
             "a: Attack = build_attack(kind, threat, steps=1, **base)",
             ("tests/evaluation/test_checks.py", "-k", "curves"), "iterations curve runs one step at every point"),
    Mutation("noise-training-without-noise", ("training/objectives.py",),
             "logits = model((x + self.alpha * signs).clamp(0.0, 1.0))", "logits = model(x)",
             ("tests/training/test_objectives.py", "-k", "noise"), "the noise objective ignores its draw"),
]


def _apply(copy: Path, m: Mutation) -> str | None:
    """Apply ``m`` to the copy; the file it went into, or None if the old text is nowhere."""
    for rel in m.files:
        p = copy / "robustlab" / rel
        if p.is_file():
            text = p.read_text()
            if m.old in text:
                p.write_text(text.replace(m.old, m.new, 1))
                return rel
    return None


def _run(m: Mutation, keep: bool, src: Path) -> dict:
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"mutant-{m.id}-"))
    try:
        copy = tmp / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        where = _apply(copy, m)
        if where is None:
            return {"status": "not applicable", "where": "-", "seconds": time.perf_counter() - t0, "detail": ""}
        env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
                   PYTHONDONTWRITEBYTECODE="1")
        probe = subprocess.run([PY, "-c", "import robustlab; print(robustlab.__file__)"], env=env, cwd=ROOT,
                               capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(copy)):
            return {"status": "ERROR (copy not imported)", "where": where, "seconds": time.perf_counter() - t0,
                    "detail": probe.stdout + probe.stderr}
        r = subprocess.run([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", *m.tests],
                           env=env, cwd=ROOT, capture_output=True, text=True)
        last = (r.stdout.strip().splitlines() or [""])[-1]
        if r.returncode == 1:
            status = "caught"
        elif r.returncode == 0:
            status = "SURVIVED"
        elif r.returncode == 5:
            status = "SURVIVED (no tests selected)"
        else:
            status = f"ERROR (pytest exit {r.returncode})"
        return {"status": status, "where": where, "seconds": time.perf_counter() - t0, "detail": last}
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--keep", action="store_true", help="keep the mutated copies")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the source tree to mutate (default: src/)")
    args = ap.parse_args()
    todo = MUTATIONS
    if args.only:
        ids = set(args.only.split(","))
        unknown = ids - {m.id for m in MUTATIONS}
        if unknown:
            ap.error(f"unknown mutation ids: {', '.join(sorted(unknown))}")
        todo = [m for m in MUTATIONS if m.id in ids]
    if args.list:
        for m in todo:
            print(f"{m.id:40s} {m.why}")
        return 0
    w = max(len(m.id) for m in todo)
    header = f"| {'mutation':{w}s} | {'tests run':50s} | {'result':28s} | {'seconds':>7s} |"
    print(header)
    print("|" + "-" * (w + 2) + "|" + "-" * 52 + "|" + "-" * 30 + "|" + "-" * 9 + "|", flush=True)
    survived = 0
    for m in todo:
        res = _run(m, args.keep, Path(args.src))
        survived += res["status"].startswith("SURVIVED")
        tests = " ".join(m.tests)
        print(f"| {m.id:{w}s} | {tests[:50]:50s} | {res['status']:28s} | {res['seconds']:7.1f} |", flush=True)
        if res["status"].startswith(("SURVIVED", "ERROR")) and res["detail"]:
            print(f"|   {res['detail'][:200]}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
