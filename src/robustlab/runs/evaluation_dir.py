"""An evaluation directory (``robustlab evaluate ... --out DIR``): the results of one evaluation,
apart from any run directory.

``DIR/evaluation.json`` holds the document :func:`evaluation_document` builds (schema below and in
``docs/results-schema.md``); with ``--save-adversarial``, ``DIR/adversarial.safetensors`` holds
``x``, ``x_adv`` (per sample the example of the first attack that broke it, else ``x``), ``y``,
``clean_pred``, ``pred_adv`` and their softmax confidences, and ``DIR/adversarial.png`` a grid of
the first broken samples (clean above adversarial).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..storage import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, environment_info
from ..storage.layout import ATTACK_EXAMPLES, EVALUATION_FILE
from ..storage.layout import ATTACK_GRID as GRID_FILE

KIND = "robustlab-evaluation"  # report.data.EVALUATION_KIND reads it
# Statistics (not settings such as eps) are rounded to what the sample size supports.
ROUNDED_KEYS = ("accuracy", "rate", "mean_", "max_", "seconds", "per_attack", "corruptions")


def significant_digits(n: int) -> int:
    """Digits an accuracy over ``n`` samples supports: at least 4, one more per factor of 10 past 10,000."""
    return max(4, math.ceil(math.log10(max(n, 1) + 1)))


def round_stats(obj: Any, digits: int) -> Any:
    """``obj`` with every float under a statistics key (accuracies, rates, norms, seconds) rounded
    to ``digits`` significant digits; the threat model, eps values and counts are left exact."""
    def rnd(v: float) -> float:
        return float(f"{v:.{digits}g}") if math.isfinite(v) else v

    def walk(o: Any, rounded: bool) -> Any:
        if isinstance(o, dict):
            return {k: (o[k] if k in ("threat", "eps", "model", "data", "checks") else
                        walk(o[k], rounded or any(s in str(k) for s in ROUNDED_KEYS))) for k in o}
        if isinstance(o, list):
            return [walk(v, rounded) for v in o]
        if isinstance(o, float) and rounded:
            return rnd(o)
        return o

    return walk(obj, False)


def evaluation_document(result_dict: dict[str, Any], *, model: dict[str, Any], data: dict[str, Any],
                        suite: str | None, extra: dict[str, Any] | None = None,
                        counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``evaluation.json`` document: the headline result (``EvaluationResult.to_dict``) with
    the model's and the data's identity, the suite, the counts behind the accuracies and any
    ``extra`` (eps curve, iterations curve, corruptions), floats rounded (:func:`significant_digits`)."""
    doc: dict[str, Any] = {"schema_version": result_dict.get("schema_version", 1), "kind": KIND}
    for k in ("clean_accuracy", "robust_accuracy", "n", "threat"):
        if k in result_dict:
            doc[k] = result_dict[k]
    doc["counts"] = dict(counts or {})
    doc["suite"] = suite
    doc.update({k: v for k, v in result_dict.items() if k not in doc and k != "checks"})
    if result_dict.get("checks"):
        doc["checks"] = result_dict["checks"]
    doc.update(extra or {})
    doc["model"] = model
    doc["data"] = data
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["environment"] = environment_info()
    return round_stats(doc, significant_digits(int(doc.get("n") or 0)))


def _confidences(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its softmax probability, batched, in eval mode."""
    from .._torch import model_guard

    preds, confs = [], []
    with torch.no_grad(), model_guard(model, eval_mode=True):
        for i in range(0, len(x), batch_size):
            p = model(x[i : i + batch_size]).float().softmax(1)
            c, k = p.max(1)
            preds.append(k)
            confs.append(c)
    return torch.cat(preds).cpu(), torch.cat(confs).cpu()


def grid_png(x: torch.Tensor, x_adv: torch.Tensor, max_columns: int = 16, scale: int = 3) -> bytes:
    """A PNG: clean images on top, their adversarial examples below, ``max_columns`` at most."""
    from io import BytesIO

    from PIL import Image

    k = min(len(x), max_columns)
    if k == 0:
        k, x, x_adv = 1, torch.zeros(1, *x.shape[1:]), torch.zeros(1, *x.shape[1:])
    c, h, w = x.shape[1:]
    pad = 2
    canvas = np.ones((2 * h + 3 * pad, k * (w + pad) + pad, 3), dtype=np.float32)
    for row, imgs in enumerate((x[:k], x_adv[:k])):
        for j, img in enumerate(imgs):
            a = img.detach().cpu().float().clamp(0, 1).numpy().transpose(1, 2, 0)
            a = np.repeat(a, 3, axis=2) if c == 1 else a[..., :3]
            top, left = pad + row * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = a
    im = Image.fromarray((canvas * 255).round().astype(np.uint8))
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_adversarial(out: Path, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> dict[str, Any]:
    """``OUT/adversarial.safetensors`` and ``OUT/adversarial.png``; returns what they hold."""
    clean_pred, clean_conf = _confidences(model, x, batch_size)
    pred_adv, conf_adv = _confidences(model, x_adv, batch_size)
    yc = y.cpu()
    atomic_save_safetensors({"x": x.detach().cpu().contiguous(), "x_adv": x_adv.detach().cpu().contiguous(), "y": yc,
                             "clean_pred": clean_pred, "pred_adv": pred_adv, "clean_conf": clean_conf,
                             "conf_adv": conf_adv}, out / ATTACK_EXAMPLES)
    broken = ((clean_pred == yc) & (pred_adv != yc)).nonzero().flatten()
    atomic_write_bytes(out / GRID_FILE, grid_png(x.cpu()[broken], x_adv.cpu()[broken]))
    return {"file": ATTACK_EXAMPLES, "grid": GRID_FILE, "n": int(len(y)), "broken_shown": int(min(len(broken), 16)),
            "robust_count_of_x_adv": int((pred_adv == yc).sum())}


def is_evaluation_dir(path: str | Path) -> bool:
    """True for a directory ``robustlab evaluate --out`` wrote (its evaluation.json says so)."""
    from ..storage.layout import read_json

    doc = read_json(Path(path) / EVALUATION_FILE)
    return isinstance(doc, dict) and doc.get("kind") == KIND


def write_evaluation_dir(out: str | Path, doc: dict[str, Any]) -> Path:
    """``OUT/evaluation.json`` (atomically); returns its path."""
    p = Path(out) / EVALUATION_FILE
    atomic_write_json(p, doc)
    return p


__all__ = ["GRID_FILE", "KIND", "evaluation_document", "grid_png", "is_evaluation_dir", "round_stats", "significant_digits",
           "write_adversarial", "write_evaluation_dir"]
