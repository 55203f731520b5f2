"""A RobustBench-style leaderboard: one row per model, from the results robustlab already wrote.

Sources (``robustlab leaderboard SOURCE ...``): an evaluation directory (``robustlab evaluate
... --out DIR``), a run directory (its ``metrics.json``; robust numbers once ``robustlab evaluate
RUN`` has run), ``zoo`` (every model card of the zoo) or ``zoo:NAME`` (one). Each row holds the
model, clean and robust accuracy (with their sample counts), the attack suite, the threat model,
the parameter count and the training wall time; a number a source does not have is shown as
``—`` and named in the row's ``missing`` list, never guessed.

Rows are grouped by threat model (robust accuracies at different budgets do not rank against each
other) and, within a group, sorted by robust accuracy, then clean accuracy (best first); models
without a robust accuracy come last.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("model", "clean", "robust", "suite", "threat", "parameters", "train time", "source")
NOT_EVALUATED = "not evaluated (no robust accuracy)"
DASH = "—"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _count_parameters(model_json: Any) -> int | None:
    """Parameters of a saved model, by rebuilding its registered architecture (never user code)."""
    arch = (model_json or {}).get("architecture") if isinstance(model_json, dict) else None
    if not isinstance(arch, dict) or "entry" in arch or "name" not in arch:
        return None
    from ..models import build_model

    options = {k: v for k, v in arch.items() if k != "name"}
    try:
        return int(sum(p.numel() for p in build_model(arch["name"], **options).parameters()))
    except (TypeError, ValueError):
        return None


def _row(model: str, source: str, kind: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "source": source, "kind": kind, "clean": None, "clean_n": None,
                           "robust": None, "robust_n": None, "suite": None, "norm": None, "eps": None,
                           "parameters": None, "train_seconds": None}
    row.update(values)
    for k in ("clean", "robust", "train_seconds", "eps"):
        row[k] = _num(row[k])
    row["missing"] = [k for k in ("clean", "robust", "suite", "parameters", "train_seconds") if row[k] is None]
    return row


def _suite(doc: dict[str, Any]) -> str | None:
    if doc.get("suite"):
        return str(doc["suite"])
    attacks = doc.get("per_attack")
    return "attacks: " + ",".join(attacks) if isinstance(attacks, dict) and attacks else None


def row_from_evaluation(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The row of an evaluation directory (its model's run, if still there, gives time and size)."""
    ident = doc.get("model") or {}
    run = Path(ident["run"]) if ident.get("run") else None
    name = (run.name if run is not None else None) or ident.get("entry") or path.name
    metrics = _read(run / "metrics.json") if run is not None else None
    if ident.get("zoo"):  # a zoo model: its card has the training time
        name = f"zoo:{ident['zoo']}"
        metrics = _read(run / "card.json") if run is not None else None
    threat = doc.get("threat") or {}
    return _row(str(name), str(path), "evaluation", clean=doc.get("clean_accuracy"), clean_n=doc.get("n"),
                robust=doc.get("robust_accuracy"), robust_n=doc.get("n"), suite=_suite(doc), norm=threat.get("norm"),
                eps=threat.get("eps"), parameters=_count_parameters({"architecture": ident.get("architecture")}),
                train_seconds=(metrics or {}).get("train_seconds"))


def row_from_run(path: Path) -> dict[str, Any]:
    """The row of a run directory: clean accuracy on its test set, robust from its last evaluation."""
    m = _read(path / "metrics.json")
    m = m if isinstance(m, dict) else {}
    return _row(path.name, str(path), "run", clean=m.get("clean_accuracy"), clean_n=m.get("test_samples"),
                robust=m.get("robust_accuracy"), robust_n=m.get("evaluated_samples") if "robust_accuracy" in m else None,
                suite=_suite(m) if "robust_accuracy" in m else None, norm=m.get("norm"), eps=m.get("eps"),
                parameters=_count_parameters(_read(path / "model.json")), train_seconds=m.get("train_seconds"))


def row_from_card(card: dict[str, Any], source: str) -> dict[str, Any]:
    """The row of a zoo model card."""
    threat = card.get("threat") or {}
    return _row(f"zoo:{card.get('name')}", source, "zoo", clean=card.get("clean_accuracy"), clean_n=card.get("clean_n"),
                robust=card.get("robust_accuracy"), robust_n=card.get("robust_n"), suite=card.get("suite"),
                norm=threat.get("norm"), eps=threat.get("eps"), parameters=card.get("parameters"),
                train_seconds=card.get("train_seconds"))


def collect_rows(sources: Sequence[str], zoo: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per model of ``sources`` (see the module docstring); a source that is none of
    those is a ValueError naming it."""
    from ..pretrained import is_zoo_ref, list_cards, read_card, zoo_dir
    from ..runs.evaluation_dir import KIND

    rows: list[dict[str, Any]] = []
    for s in sources:
        if s == "zoo":
            # an entry whose card is unreadable is a row of dashes (its name only)
            rows += [row_from_card(c if "error" not in c else {"name": c["name"]}, f"zoo ({zoo_dir(zoo)})")
                     for c in list_cards(zoo)]
            continue
        if is_zoo_ref(s):
            rows.append(row_from_card(read_card(s, zoo), s))
            continue
        p = Path(s)
        doc = _read(p / "evaluation.json")
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            rows.append(row_from_evaluation(p, doc))
        elif (p / "metrics.json").is_file() or (p / "model.json").is_file():
            rows.append(row_from_run(p))
        else:
            raise ValueError(f"{s} is neither an evaluation directory (robustlab evaluate --out), a run directory "
                             "nor zoo / zoo:NAME")
    return rows


def threat_label(norm: Any, eps: Any) -> str:
    """``Linf, eps = 0.1`` (or the not-evaluated label)."""
    if norm is None or eps is None:
        return NOT_EVALUATED
    return f"{str(norm).capitalize()}, eps = {eps:g}"


def grouped(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(threat label, rows) groups, each sorted best first; the not-evaluated group last."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        evaluated = r["robust"] is not None and r["norm"] is not None and r["eps"] is not None
        key = (0, str(r["norm"]), r["eps"]) if evaluated else (1, "", 0.0)
        groups.setdefault(key, []).append(r)
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: (-(r["robust"] if r["robust"] is not None else -1.0),
                                                     -(r["clean"] if r["clean"] is not None else -1.0), r["model"]))
        out.append((threat_label(members[0]["norm"], members[0]["eps"]) if key[0] == 0 else NOT_EVALUATED, members))
    return out


def _pct(v: float | None, n: Any) -> str:
    if v is None:
        return DASH
    return f"{100 * v:.2f}%" + (f" (n={n})" if isinstance(n, int) else "")


def _time(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def cells(row: dict[str, Any]) -> list[str]:
    """A row's table cells, in :data:`COLUMNS` order (``—`` for what is missing)."""
    threat = DASH if row["norm"] is None or row["eps"] is None else f"{row['norm']} {row['eps']:g}"
    params = DASH if row["parameters"] is None else f"{row['parameters']:,}"
    return [row["model"], _pct(row["clean"], row["clean_n"]), _pct(row["robust"], row["robust_n"]),
            row["suite"] or DASH, threat, params, _time(row["train_seconds"]), row["source"]]


def format_text(rows: Sequence[dict[str, Any]]) -> str:
    """The leaderboard as plain text, one block per threat model."""
    if not rows:
        return "no models"
    blocks = []
    for label, members in grouped(rows):
        table = [["#", *COLUMNS]] + [[str(i), *cells(r)] for i, r in enumerate(members, 1)]
        widths = [max(len(t[c]) for t in table) for c in range(len(table[0]))]
        lines = ["  ".join(t[c].ljust(widths[c]) for c in range(len(t))).rstrip() for t in table]
        blocks.append("\n".join([label, *lines]))
    return "\n\n".join(blocks)


def format_markdown(rows: Sequence[dict[str, Any]], title: str = "Leaderboard") -> str:
    """The leaderboard as Markdown: a heading and a table per threat model."""
    out = [f"# {title}", ""]
    if not rows:
        out.append("No models yet.")
    for label, members in grouped(rows):
        out += [f"## {label}", "", "| # | " + " | ".join(c.capitalize() for c in COLUMNS) + " |",
                "|---" * (len(COLUMNS) + 1) + "|"]
        out += [f"| {i} | " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for i, r in enumerate(members, 1)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def format_html(rows: Sequence[dict[str, Any]], title: str = "Leaderboard") -> str:
    """The leaderboard as one self-contained HTML page."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}</style></head>"
             f"<body><h1>{e(title)}</h1>"]
    if not rows:
        parts.append("<p>No models yet.</p>")
    for label, members in grouped(rows):
        parts.append(f"<h2>{e(label)}</h2><table><tr><th>#</th>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
        for i, r in enumerate(members, 1):
            parts.append(f"<tr><td>{i}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells(r)) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


__all__ = ["COLUMNS", "cells", "collect_rows", "format_html", "format_markdown", "format_text", "grouped",
           "row_from_card", "row_from_evaluation", "row_from_run", "threat_label"]
