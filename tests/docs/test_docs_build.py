"""The documentation site builds with ``mkdocs build --strict`` (every warning an error: a broken
link or anchor, a docstring mkdocstrings cannot parse, a page missing from the nav, an API page
naming an object that no longer exists).

Needs the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings[python]); CI installs it, so the
test runs there. Without it the test is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = [
    m
    for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    if importlib.util.find_spec(m.split(".")[0]) is None
    or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)
]


@pytest.mark.skipif(bool(MISSING), reason=f"docs tools not installed ({', '.join(MISSING)}): pip install -e '.[docs]'")
def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ["index.html", "attacks.html", "defenses.html", "evaluation.html", "results-schema.html", "api/attacks.html"]:
        assert (site / page).is_file(), page
    # The API reference shows the public names (a sample from each package).
    api = {p: (site / "api" / f"{p}.html").read_text() for p in ["attacks", "evaluation", "training", "storage", "models", "runs"]}
    for page, name in [("attacks", "robustlab.attacks.PGD"), ("attacks", "robustlab.attacks.FAB"),
                       ("attacks", "robustlab.attacks.build_attack"), ("models", "robustlab.models.entry.load_entry"),
                       ("runs", "robustlab.runs.evaluation_dir.evaluation_document"),
                       ("evaluation", "robustlab.evaluation.evaluate.evaluate"), ("evaluation", "robustlab.evaluation.run_checks"),
                       ("training", "robustlab.training.build_objective"), ("storage", "robustlab.storage.load_model")]:
        assert f'id="{name}"' in api[page], f"{name} missing from api/{page}.html"
