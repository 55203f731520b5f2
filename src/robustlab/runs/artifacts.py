"""Report artifacts: the few things a report shows that need the model, computed once and saved.

:func:`write_artifacts` loads a run's model and test data and writes ``RUN/artifacts/``:

* ``examples.safetensors`` -- PGD-20 adversarial examples at ``eps`` for ``n_examples`` correctly
  classified test images (one class after another): ``x``, ``x_adv``, ``y``, ``index``,
  ``pred_clean``/``conf_clean`` and ``pred_adv``/``conf_adv`` (softmax probability of the predicted
  class) and ``success``;
* ``feature_maps.safetensors`` -- one channel of the first conv stage (conv -> norm -> activation,
  before pooling) for one clean input and its adversarial example, and for models with a denoising
  block (a module whose class name contains ``Denoise``) the same channel before and after the first
  such block. Keys ``<layer>.clean`` / ``<layer>.adv`` (H, W), plus ``input.clean`` / ``input.adv``;
* ``loss_surface.safetensors`` -- cross-entropy loss on a 21x21 grid ``x + a*g + b*r`` (clipped to
  the bounds), ``a, b`` in ``[-2 eps, 2 eps]``: ``g`` the gradient-sign direction (L2 threat: the
  normalised gradient), ``r`` a random direction orthogonal to ``g`` with the same L2 norm.
  ``loss[i, j]`` is at ``a = coords[i]``, ``b = coords[j]``; ``coords[grid // 2] == 0`` exactly;
* ``filters.safetensors`` -- ``weight`` of the first ``Conv2d`` (out, in, kh, kw); for a model
  without convolutions, the first ``Linear`` layer's rows reshaped to images (out, C, H, W);
* ``class_visualisations.safetensors`` -- ``images`` (K, C, H, W): for each class, the input that
  maximises its logit minus an L2 penalty on the change from a grey start (100 Adam steps, clamped
  to the bounds; the penalty weight is relative to the logit's input gradient at the start);
* decision regions, channel visualisations, nearest neighbours: :mod:`robustlab.runs.visual_artifacts`;
* ``artifacts.json`` -- the manifest (what was computed, how, and any section that could not be),
  written last: the report trusts only what the manifest lists.

All model work runs under :func:`robustlab.attacks.model_guard`, so the model is left exactly as
found (modes, parameters, buffers, ``requires_grad``, ``.grad``); hooks are removed afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import model_guard
from ..attacks import PGD
from ..models.entry import sha256_file
from ..storage import atomic_save_safetensors, atomic_write_json, environment_info
from ..storage.layout import ARTIFACTS_DIR, MANIFEST, MODEL_WEIGHTS, VISUAL_ARTIFACTS, read_json
from ..threat import ThreatModel, canonical_norm
from .visual_artifacts import write_visual_artifacts

SCHEMA_VERSION = 1
FILES = {
    "examples": "examples.safetensors",
    "feature_maps": "feature_maps.safetensors",
    "loss_surface": "loss_surface.safetensors",
    "filters": "filters.safetensors",
    "class_visualisations": "class_visualisations.safetensors",
}
GRID = 21
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
_POOL_LAYERS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# --- helpers ---------------------------------------------------------------------------------
@torch.no_grad()
def _predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with model_guard(model, eval_mode=True):
        return torch.cat([F.softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)])


def select_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int,
                    prefer: Sequence[int] | None = None, pool: int = 2000) -> torch.Tensor:
    """Indices of ``n`` correctly classified images among the first ``pool``: one class after
    another, in order of appearance. Indices in ``prefer`` (e.g. another run's examples, so that two
    models are shown the same images) come first when this model classifies them correctly."""
    if n < 1:
        raise ValueError(f"n_examples must be >= 1, got {n}")
    m = min(len(x), pool)
    pred = _predict_proba(model, x[:m]).argmax(1)
    correct = (pred == y[:m]).cpu()
    chosen: list[int] = []
    for i in prefer or []:
        i = int(i)
        if 0 <= i < m and bool(correct[i]) and i not in chosen and len(chosen) < n:
            chosen.append(i)
    by_class: dict[int, list[int]] = {}
    for i in correct.nonzero().flatten().tolist():
        if i not in chosen:
            by_class.setdefault(int(y[i]), []).append(i)
    queues = list(by_class.values())
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    if not chosen:
        raise ValueError("the model classifies none of the test images correctly; no adversarial examples to show")
    return torch.tensor(chosen, dtype=torch.long)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                         steps: int = 20, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """PGD-``steps`` examples for ``(x, y)`` with predictions and confidences before and after."""
    attack = PGD(threat, steps=steps, seed=seed)
    res = attack.run(model, x, y)
    p_clean = _predict_proba(model, x)
    p_adv = _predict_proba(model, res.x_adv)
    conf_clean, pred_clean = p_clean.max(1)
    conf_adv, pred_adv = p_adv.max(1)
    out = {
        "x": x, "x_adv": res.x_adv, "y": y,
        "pred_clean": pred_clean, "conf_clean": conf_clean,
        "pred_adv": pred_adv, "conf_adv": conf_adv,
        "success": res.success.to(torch.uint8),
    }
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}, repr(attack)


def _first_conv_stage(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The output of the first convolution with its norm/activation (before any pooling)."""
    modules = dict(model.named_modules())
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name)
        if isinstance(parent, nn.Sequential) and child.isdigit():
            chosen: tuple[str, nn.Module] = (name, mod)
            for i in range(int(child) + 1, len(parent)):
                nxt = parent[i]
                if isinstance(nxt, _POOL_LAYERS) or isinstance(nxt, (nn.Conv2d, nn.Linear, nn.Sequential)):
                    break
                if isinstance(nxt, _NORM_LAYERS) or type(nxt).__module__.startswith("torch.nn.modules.activation"):
                    chosen = (f"{parent_name}.{i}" if parent_name else str(i), nxt)
                    continue
                break
            return chosen
        return name, mod
    return None


def _first_denoise(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, mod in model.named_modules():
        if name and "denoise" in type(mod).__name__.lower():
            return name, mod
    return None


def feature_maps(model: nn.Module, x_clean: torch.Tensor, x_adv: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """One channel of the first conv stage (and before/after the first denoising block) for one
    clean image and its adversarial example (each of shape (C, H, W) or (1, C, H, W)).

    The channel shown is the one whose activation changes most under the attack (mean absolute
    difference); the denoising block's output shows the same channel as its input when the channel
    counts agree. Returns tensors ``<key>.clean``/``<key>.adv`` of shape (H, W) and one record per
    layer (key, module path, class, channel, channel count, label)."""
    xc = x_clean.reshape(1, *x_clean.shape[-3:])
    xa = x_adv.reshape(1, *x_adv.shape[-3:])
    targets: list[tuple[str, str, nn.Module, str]] = []  # key, path, module, what ("out" | "in")
    stage = _first_conv_stage(model)
    if stage is None:
        return {}, []
    targets.append(("stage", stage[0], stage[1], "out"))
    den = _first_denoise(model)
    if den is not None:
        targets.append(("denoise_in", den[0], den[1], "in"))
        targets.append(("denoise_out", den[0], den[1], "out"))
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(key: str, what: str):
        def hook(_mod, args, output):
            t = args[0] if what == "in" else output
            if isinstance(t, (tuple, list)):
                t = t[0]
            captured[key] = t.detach().clone()
        return hook

    try:
        for key, _path, mod, what in targets:
            handles.append(mod.register_forward_hook(make_hook(key, what)))
        with torch.no_grad(), model_guard(model, eval_mode=True):
            model(torch.cat([xc, xa]))
    finally:
        for h in handles:
            h.remove()
    tensors: dict[str, torch.Tensor] = {"input.clean": xc[0].detach().cpu(), "input.adv": xa[0].detach().cpu()}
    layers: list[dict[str, Any]] = []
    labels = {"stage": "first conv stage", "denoise_in": "before denoising", "denoise_out": "after denoising"}
    prev_channel: int | None = None
    for key, path, mod, _what in targets:
        t = captured.get(key)
        if t is None or t.dim() != 4:
            continue
        c = t.shape[1]
        if key == "denoise_out" and prev_channel is not None and prev_channel < c:
            ch = prev_channel
        else:
            ch = int((t[0] - t[1]).abs().flatten(1).mean(1).argmax())
        prev_channel = ch
        tensors[f"{key}.clean"] = t[0, ch].cpu().contiguous()
        tensors[f"{key}.adv"] = t[1, ch].cpu().contiguous()
        layers.append({"key": key, "module": path, "class": type(mod).__name__, "channel": ch, "channels": int(c),
                       "label": labels[key]})
    return tensors, layers


def loss_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor | int, threat: ThreatModel, grid: int = GRID,
                 seed: int = 0, batch_size: int = 256) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Cross-entropy of one input on the plane spanned by the gradient direction and a random
    orthogonal one, over ``[-2 eps, 2 eps]^2`` (see the module docstring)."""
    if grid < 3 or grid % 2 == 0:
        raise ValueError(f"grid must be an odd number >= 3, got {grid}")
    x0 = x.reshape(1, *x.shape[-3:]).detach()
    yt = torch.as_tensor([int(y)], device=x0.device)
    eps = threat.eps
    with model_guard(model, eval_mode=True):
        xg = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            loss0 = F.cross_entropy(model(xg), yt)
            (grad,) = torch.autograd.grad(loss0, xg)
        gen = torch.Generator().manual_seed(int(seed))
        zero_grad = bool((grad == 0).all())
        if threat.norm == "linf":
            g = grad.sign()
            if zero_grad:
                g = (torch.randint(0, 2, x0.shape, generator=gen) * 2 - 1).to(x0)
        else:
            g = grad if not zero_grad else torch.randn(x0.shape, generator=gen).to(x0)
            g = g / g.norm()
        r = torch.randn(x0.shape, generator=gen).to(x0)
        if threat.norm == "linf":
            r = r.sign()
        r = r - (r * g).sum() / (g * g).sum() * g
        r = r * (g.norm() / r.norm().clamp_min(1e-12))
        half = grid // 2
        steps = torch.arange(-half, half + 1, dtype=torch.float64) / half  # exact 0 in the middle
        coords = (2 * eps * steps).to(x0.dtype)
        a = coords.to(x0.device).view(-1, 1).expand(grid, grid).reshape(-1)
        b = coords.to(x0.device).view(1, -1).expand(grid, grid).reshape(-1)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        pts = threat.clip_bounds(x0 + a.view(shape) * g + b.view(shape) * r)
        losses = []
        with torch.no_grad():
            for i in range(0, len(pts), batch_size):
                chunk = pts[i : i + batch_size]
                losses.append(F.cross_entropy(model(chunk), yt.expand(len(chunk)), reduction="none"))
            center = float(F.cross_entropy(model(x0), yt))
    loss = torch.cat(losses).view(grid, grid)
    meta = {
        "center_loss": center,
        "label": int(y),
        "grid": grid,
        "range": [-2 * eps, 2 * eps],
        "direction_a": "sign of the input gradient of the loss" if threat.norm == "linf" else "input gradient scaled to unit L2 norm",
        "direction_b": "random direction orthogonal to a, same L2 norm",
        "zero_gradient": zero_grad,
        "clipped_to_bounds": True,
        "seed": int(seed),
    }
    return {"loss": loss.cpu().contiguous(), "coords": coords.cpu().contiguous()}, meta


def first_layer_filters(model: nn.Module, input_shape: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """Weights of the first Conv2d, or of the first Linear as images when there is no conv."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return mod.weight.detach().cpu().clone(), {"layer": name, "kind": "conv"}
    if input_shape is not None:
        c, h, w = (int(v) for v in input_shape)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and mod.in_features == c * h * w:
                return mod.weight.detach().cpu().reshape(-1, c, h, w).clone(), {"layer": name, "kind": "linear"}
    return None


def class_visualisations(model: nn.Module, num_classes: int, shape: Sequence[int], device: torch.device | str = "cpu",
                         steps: int = 100, lr: float = 0.02, l2: float = 2.0, start: float = 0.5,
                         bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, dict[str, Any]]:
    """Activation maximisation: for each class k, ascend ``logit_k(x) - lam_k * ||x - start||^2``
    from a grey image with Adam, clamping to ``bounds`` after every step.

    The penalty weight is relative to the model's scale: ``lam_k = l2 * mean|d logit_k / dx|`` at
    the grey start, so a pixel settles roughly where its gradient balances a change of
    ``1 / (2 l2)`` whatever the image size or logit scale. Returns images (K, C, H, W) and a record
    with the softmax probability each image gets for its class."""
    c, h, w = (int(v) for v in shape)
    idx = torch.arange(num_classes, device=device)
    x = torch.full((num_classes, c, h, w), float(start), device=device, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    with model_guard(model, eval_mode=True), torch.enable_grad():
        (g0,) = torch.autograd.grad(model(x)[idx, idx].sum(), x)
        lam = l2 * g0.abs().flatten(1).mean(1).clamp_min(1e-8).view(-1, 1, 1, 1)
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            objective = logits[idx, idx].sum() - (lam * (x - start) ** 2).sum()
            (-objective).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(*bounds)
        with torch.no_grad():
            prob = F.softmax(model(x), 1)[idx, idx]
    meta = {"steps": int(steps), "lr": lr, "l2": l2, "l2_relative_to": "mean |input gradient| of the logit at the start",
            "start": start, "optimizer": "adam", "target_probability": [round(float(p), 4) for p in prob.cpu()]}
    return x.detach().cpu().contiguous(), meta


# --- the run-level entry point -----------------------------------------------------------------
def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's artifacts manifest, or None when there is none (or it is unreadable)."""
    d = read_json(Path(run_dir) / ARTIFACTS_DIR / MANIFEST)
    return d if isinstance(d, dict) else None


def write_artifacts(run_dir: str | Path, n_examples: int = 8, eps: float = 0.1, norm: str = "linf",
                    device: str = "cpu", compare_run: str | Path | None = None,
                    model_and_data: tuple[Any, Any, Any, Any] | None = None) -> Path:
    """Compute the report artifacts of a run (see the module docstring) into ``RUN/artifacts/``.

    ``compare_run``: another run directory whose artifacts already exist; its example images (and
    the image of its feature maps and loss surface) are reused where this model classifies them
    correctly, so two models are shown the same inputs.
    ``model_and_data``: ``(model, x, y, info)`` to use instead of the run's model and test set
    (``robustlab report --model ENTRY --data PATH``).
    Returns the manifest's path.
    """
    from ..storage import load_model
    from .train import load_run_data, resolve_device

    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}")
    threat = ThreatModel(canonical_norm(norm), eps)
    if threat.eps <= 0:
        raise ValueError(f"eps must be > 0 for report artifacts, got {eps}")
    run = Path(run_dir)
    out = run / ARTIFACTS_DIR
    dev = resolve_device(device)
    t0 = time.perf_counter()
    if model_and_data is not None:
        model, x, y, info = model_and_data
    else:
        model = load_model(run, map_location=dev)
        x, y, info = load_run_data(run, "test", dev)
    prefer, prefer_one = None, None
    if compare_run is not None:
        other = read_manifest(compare_run) or {}
        prefer = (other.get("examples") or {}).get("indices")
        prefer_one = (other.get("loss_surface") or {}).get("index")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "eps": threat.eps,
        "norm": threat.norm,
        "bounds": list(threat.bounds),
        "n_examples": n_examples,
        "model_sha256": sha256_file(run / MODEL_WEIGHTS) if (run / MODEL_WEIGHTS).is_file() else None,
        "dataset": info.name,
        "class_names": list(info.class_names),
        "compare_run": str(compare_run) if compare_run is not None else None,
        "environment": environment_info(),
    }

    # adversarial examples
    idx = select_examples(model, x, y, n_examples, prefer=prefer).to(dev)
    ex, attack_repr = adversarial_examples(model, x[idx], y[idx], threat)
    ex["index"] = idx.cpu()
    atomic_save_safetensors(ex, out / FILES["examples"])
    manifest["examples"] = {"file": FILES["examples"], "attack": attack_repr, "indices": idx.cpu().tolist(),
                            "n": int(len(idx)), "fooled": int(ex["success"].sum())}

    # one input for feature maps and the loss surface: the compared run's when this run shows it
    # too, else the first fooled example, else the first
    fooled = ex["success"].nonzero().flatten()
    k = int(fooled[0]) if len(fooled) else 0
    if prefer_one is not None and int(prefer_one) in idx.tolist():
        k = idx.tolist().index(int(prefer_one))
    x_one, y_one, x_one_adv = x[idx[k]], int(y[idx[k]]), ex["x_adv"][k].to(dev)

    maps, layers = feature_maps(model, x_one, x_one_adv)
    if layers:
        atomic_save_safetensors(maps, out / FILES["feature_maps"])
        manifest["feature_maps"] = {"file": FILES["feature_maps"], "index": int(idx[k]), "example": k, "layers": layers}
    else:
        manifest["feature_maps"] = {"missing": "the model has no Conv2d layer"}

    surface, meta = loss_surface(model, x_one, y_one, threat)
    atomic_save_safetensors(surface, out / FILES["loss_surface"])
    manifest["loss_surface"] = {"file": FILES["loss_surface"], "index": int(idx[k]), **meta}

    filt = first_layer_filters(model, info.shape)
    if filt is not None:
        atomic_save_safetensors({"weight": filt[0]}, out / FILES["filters"])
        manifest["filters"] = {"file": FILES["filters"], "shape": list(filt[0].shape), **filt[1]}
    else:
        manifest["filters"] = {"missing": "the model has no Conv2d layer (nor a Linear layer on the pixels)"}

    images, meta = class_visualisations(model, info.num_classes, info.shape, device=dev)
    atomic_save_safetensors({"images": images}, out / FILES["class_visualisations"])
    manifest["class_visualisations"] = {"file": FILES["class_visualisations"], **meta}
    manifest.update(write_visual_artifacts(model, out, x, y, int(idx[k]), threat, info.shape,
                                           None if model_and_data is not None else run, device=dev))

    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / MANIFEST, manifest)  # last: the commit point the report trusts
    return out / MANIFEST


def refresh_artifacts(runs: Sequence[str | Path], n_examples: int = 8, eps: float = 0.1, norm: str = "linf",
                      device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Bring the artifacts of every run up to date for a report (``robustlab report``), one run
    after another, yielding ``{"run", "status", "seconds"}`` as each is done: status ``fresh`` (its
    manifest already has these eps, norm, n_examples, every section and the weights' sha256),
    ``no-model`` (no weights: the report shows it without artifacts) or ``written``. The first run with artifacts is the
    others' ``compare_run``, so all runs show the same inputs where they can."""
    threat = ThreatModel(canonical_norm(norm), eps)
    first_with_artifacts = None
    for run in runs:
        have, weights = read_manifest(run), Path(run) / MODEL_WEIGHTS
        t0 = time.perf_counter()
        if (have is not None and have.get("eps") == threat.eps and have.get("norm") == threat.norm
                and have.get("n_examples") == n_examples and all(s in have for s in VISUAL_ARTIFACTS)
                and (not weights.is_file() or have.get("model_sha256") == sha256_file(weights))):
            status = "fresh"
        elif not weights.is_file():
            yield {"run": run, "status": "no-model", "seconds": 0.0}
            continue
        else:
            write_artifacts(run, n_examples=n_examples, eps=threat.eps, norm=threat.norm, device=device,
                            compare_run=first_with_artifacts)
            status = "written"
        first_with_artifacts = first_with_artifacts or run
        yield {"run": run, "status": status, "seconds": time.perf_counter() - t0}


__all__ = [
    "ARTIFACTS_DIR",
    "FILES",
    "MANIFEST",
    "adversarial_examples",
    "class_visualisations",
    "feature_maps",
    "first_layer_filters",
    "loss_surface",
    "read_manifest",
    "refresh_artifacts",
    "select_examples",
    "write_artifacts",
]
