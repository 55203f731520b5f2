"""The run directory: every file name that train, evaluate, attack and report share, and the
readers of the files more than one of them reads.

A run directory (``robustlab train --out RUN``) holds::

    config.json              the run's spec and training settings (resume refuses other settings)
    model.safetensors        weights            model.json    architecture, metadata, versions
    train_state.safetensors  optimiser, schedule, RNG and position, for resume
    history.jsonl            one line per finished epoch
    metrics.json             clean_accuracy, then robust_accuracy / per_attack once evaluated
    evaluation.json          the last evaluation's per-sample outcomes
    artifacts/artifacts.json tensors a report draws (examples, feature maps, ...), one file each
    report.html              the self-contained report

Generative runs add ``networks.json`` and their artifacts; ``attack --out``, ``evaluate --out``,
``train-detector --out``, ``compare --out`` and ``experiment linearity --out`` directories use
the names below too, so no module spells a file name of its own.

It lives in ``storage`` rather than ``runs`` because training (below ``runs`` in the import
order) writes most of these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
STATE_FILE = "train_state.safetensors"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
ARTIFACTS_DIR = "artifacts"
MANIFEST = "artifacts.json"
REPORT_FILE = "report.html"
DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_META = "detector.json"
ATTACK_EXAMPLES = "adversarial.safetensors"
ATTACK_SUMMARY = "summary.json"
ATTACK_GRID = "adversarial.png"
ROC_FILE = "roc.json"  # train-detector: the ROC points the report draws
# generative runs (robustlab gan / cyclegan / advgan train)
NETWORKS_META = "networks.json"  # the networks' architectures (weights: MODEL_WEIGHTS)
GAN_SAMPLES = "gan_samples.safetensors"  # in ARTIFACTS_DIR: the fixed-code grid after every epoch
CYCLEGAN_TRANSLATIONS = "cyclegan_translations.safetensors"  # in ARTIFACTS_DIR
ADVGAN_EXAMPLES = "advgan_examples.safetensors"  # in ARTIFACTS_DIR
# other commands' output directories
COMPARE_FIGURE = "compare.png"  # robustlab compare --out DIR
COMPARE_DATA = "compare.json"
LINEARITY_JSON = "linearity.json"  # robustlab experiment linearity --out DIR
LINEARITY_PNG = "linearity.png"
# in ARTIFACTS_DIR: the report's CNN visualisations (robustlab.runs.visual_artifacts), by manifest section
VISUAL_ARTIFACTS = {
    "decision_regions": "decision_regions.safetensors",
    "channel_visualisations": "channel_visualisations.safetensors",
    "nearest_neighbours": "nearest_neighbours.safetensors",
}


def read_json(path: str | Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (for readers that show
    what there is, such as reports)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_history(run_dir: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """``history.jsonl`` as a list of dicts ([] when the file is missing).

    The loop rewrites the file atomically, so a line that does not parse means the file was
    damaged by something else: ``strict`` (the default) raises a ValueError naming the file and
    line; ``strict=False`` skips such lines (a report shows what it can)."""
    p = Path(run_dir) / HISTORY_FILE
    try:
        text = p.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError):
        if strict:
            raise
        return []
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            d = None
        if isinstance(d, dict):
            out.append(d)
        elif strict:
            raise ValueError(f"{p}: line {i} is not a JSON object: {line[:80]!r}")
    return out
