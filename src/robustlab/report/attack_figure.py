"""The figure of a ``robustlab attack --out DIR`` directory (the panda-to-gibbon figure): read
from its files only (``adversarial.safetensors``, ``summary.json``), never from a model."""

from __future__ import annotations

from pathlib import Path

from ..storage import read_safetensors
from ..storage.layout import ATTACK_EXAMPLES, ATTACK_GRID, ATTACK_SUMMARY, read_json
from .plots import plot_attack_examples


def draw_attack_dir(out: str | Path, n: int = 8) -> Path:
    """Draw the first ``n`` examples of an attack directory into ``OUT/adversarial.png``: original
    (true label, prediction, confidence), the perturbation magnified, the adversarial example
    (prediction, confidence; red where the prediction changed)."""
    d = Path(out)
    t = read_safetensors(d / ATTACK_EXAMPLES)
    summary = read_json(d / ATTACK_SUMMARY) or {}
    names = [str(c) for c in summary.get("class_names") or []]

    def name(k: int) -> str:
        return names[k] if 0 <= k < len(names) else str(k)

    k = min(n, len(t["x"]))
    title = str(summary.get("attack", ""))
    if summary.get("target") is not None:
        title += f", target {summary['target']}"
    if summary.get("labels") == "predicted":
        title += ", attacking the predictions"
    plot_attack_examples(
        t["x"][:k].float().numpy(), t["x_adv"][:k].float().numpy(),
        [f"true {name(int(c))}" for c in t["y"][:k]],
        [(name(int(c)), float(v)) for c, v in zip(t["clean_pred"][:k], t["clean_conf"][:k])],
        [(name(int(c)), float(v)) for c, v in zip(t["pred_adv"][:k], t["adv_conf"][:k])],
        d / ATTACK_GRID, title=title)
    return d / ATTACK_GRID
