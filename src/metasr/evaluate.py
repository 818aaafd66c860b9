"""One evaluator for arbitrary-scale SR: LR generation, 8-bit rounding, metrics, per-scale table.

The protocol (Meta-SR / ArbSR, per axis), used by ``metasr eval``,
``scripts/eval_default_model.py`` and the per-scale table of BasicSR's ``MetaSRModel``:

* **LR.** For scale ``(r_v, r_h)`` an HR image of ``H × W`` gives an LR of
  ``h = floor(H/r_v + 1e-6)`` rows and ``w = floor(W/r_h + 1e-6)`` columns (the guarded floor of
  :mod:`metasr.geometry`: at ``H = 33``, ``r = 1.1`` that is 30 rows, where ``int(33 // 1.1)``
  would give 29), made by MATLAB bicubic per axis; the HR is cropped to the model's output size
  ``floor(h·r + 1e-6)`` (:func:`metasr.data.bicubic_pair`, the same code as the datasets). An
  evaluation *size* ``LQSize(h, w)`` fixes the LR size instead; the scale is then ``H/h, W/w``.
* **Rounding.** Images (values in 0..1) are rounded to 8 bits where a file would be written:
  the generated LR, the model's output and the bicubic baseline
  (:func:`metasr.metrics.quantize_8bit`). ``.npy`` fields keep full precision.
* **Metrics.** PSNR/SSIM on the BT.601 Y channel for RGB images (peak 1), on the raw values for
  fields (peak: the HR's ``max − min``), after shaving ``ceil(r_v)`` rows and ``ceil(r_h)``
  columns on each side (:mod:`metasr.metrics`).

:func:`evaluate` returns one row per image and scale; :func:`summarize` turns rows into the
per-scale table (one row per scale, in first-seen order, plus the mean over scales).

Example::

    from metasr.checkpoints import load_model
    from metasr.evaluate import evaluate, summarize
    from metasr.metrics import format_table

    rows = evaluate(load_model("default"), [hr], ["2", (1.5, 4)], bicubic=True)
    print(format_table(summarize(rows), ["scale", "psnr", "bicubic_psnr", "delta_psnr"]))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metrics
from .data.datasets import bicubic_pair
from .data.resize import imresize
from .data.scales import Scale, format_scale, lq_size_for, to_scale
from .geometry import resolve_output_size

__all__ = [
    "EvalModel",
    "LQSize",
    "Upscaler",
    "as_upscaler",
    "evaluate",
    "finite_or_none",
    "score",
    "summarize",
]

#: ``fn(lq (1, C, h, w) in 0..1, (r_v, r_h), (H, W)) -> (1, C', H, W)`` in 0..1.
Upscaler = Callable[[torch.Tensor, Scale, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class LQSize:
    """An evaluation setting given as the LR size: the HR is shrunk to exactly ``h × w``."""

    h: int
    w: int

    @property
    def label(self) -> str:
        """Table label, ``"lq96x144"`` (scale labels are plain numbers, ``"2"``/``"1.5x4"``)."""
        return f"lq{self.h}x{self.w}"


@dataclass
class EvalModel:
    """A model ready for :func:`evaluate`.

    Attributes:
        fn: the :data:`Upscaler`.
        in_channels: channels the model takes (0: any, e.g. bicubic); images are read with 1 or
            3 channels accordingly.
        name: for the report.
    """

    fn: Upscaler
    in_channels: int
    name: str


def _bicubic(lq: torch.Tensor, scale: Scale, size: tuple[int, int]) -> torch.Tensor:
    return imresize(lq, scale=scale, size=size)


def as_upscaler(model: object, device: str | torch.device = "cpu") -> EvalModel:
    """Wrap what can be evaluated into an :class:`EvalModel`.

    Args:
        model: ``"bicubic"``; an :class:`EvalModel`; a loaded model (anything with ``model`` and
            ``value_range``, as :class:`metasr.checkpoints.LoadedModel`); a network
            ``net(x, scale=(r_v, r_h))`` (its ``input_range`` scales 0..1 images, as in
            :class:`MetaSRModel`); or an :data:`Upscaler` callable (taken to accept any channel
            count).
        device: where a network runs; outputs come back as float32 on the CPU.

    Raises:
        ValueError: ``model`` cannot be evaluated, or ``device`` is not a device of this
            machine (:func:`metasr.checkpoints.resolve_device`).
    """
    from .checkpoints import resolve_device

    device = resolve_device(device)
    if isinstance(model, EvalModel):
        return model
    if isinstance(model, str):
        if model != "bicubic":
            raise ValueError(f"model {model!r}: only 'bicubic' is accepted by name here")
        return EvalModel(_bicubic, 0, "bicubic")
    if hasattr(model, "model") and hasattr(model, "value_range"):
        net, gain = model.model, float(model.value_range)  # type: ignore[attr-defined]
        in_channels = int(getattr(model, "in_channels", 3))
        name = str(getattr(model, "name", type(net).__name__))
    elif isinstance(model, nn.Module):
        net, gain = model, float(getattr(model, "input_range", 1.0))
        in_channels, name = int(getattr(model, "in_channels", 3)), type(model).__name__
    elif callable(model):
        return EvalModel(model, 0, getattr(model, "__name__", "model"))  # type: ignore[arg-type]
    else:
        raise ValueError(f"cannot evaluate a {type(model).__name__}")
    net = net.to(device).eval()

    def fn(lq: torch.Tensor, scale: Scale, size: tuple[int, int]) -> torch.Tensor:
        with torch.no_grad():
            out = net(lq.to(device) * gain, scale=scale)
        return (out / gain).float().cpu()

    return EvalModel(fn, in_channels, name)


def score(
    sr: torch.Tensor,
    hr: torch.Tensor,
    scale: Scale,
    kind: str = "image",
    names: Sequence[str] = ("psnr", "ssim"),
) -> dict[str, float]:
    """Metrics of one output under the protocol (8-bit rounding of images included).

    Args:
        sr: ``(C, H, W)`` model output; images in 0..1.
        hr: ``(C, H, W)`` ground truth.
        scale: ``(r_v, r_h)``: border ``ceil(r_v)`` rows, ``ceil(r_h)`` columns.
        kind: ``"image"`` (Y channel for RGB, peak 1, ``sr`` rounded to 8 bits) or anything else
            for fields (``"array"``/``"field"``: raw values, peak = ``hr``'s ``max − min``).
        names: metrics, from ``"psnr"`` and ``"ssim"``.

    Raises:
        ValueError: shapes differ, or an unknown metric.
    """
    if tuple(sr.shape) != tuple(hr.shape):
        raise ValueError(
            f"model output {tuple(sr.shape)} does not match the HR {tuple(hr.shape)} at scale "
            f"{format_scale(scale)}"
        )
    is_image = kind == "image"
    if is_image:
        sr = metrics.quantize_8bit(sr)
    data_range: metrics.DataRange = 1.0 if is_image else "gt"
    out = {}
    for name in names:
        fn = {"psnr": metrics.psnr, "ssim": metrics.ssim}.get(name)
        if fn is None:
            raise ValueError(f"unknown metric {name!r}; choose psnr or ssim")
        out[name] = float(fn(sr, hr, scale=scale, data_range=data_range)[0])
    return out


def _setting(spec: object) -> tuple[Scale | LQSize, str]:
    """A scale (number, pair or spec string) or :class:`LQSize` → (setting, label)."""
    if isinstance(spec, LQSize):
        return spec, spec.label
    scale = to_scale(spec)
    return scale, format_scale(scale)


def evaluate(
    model: object,
    images: Sequence[torch.Tensor],
    scales: Iterable[object],
    *,
    kind: str = "image",
    bicubic: bool = False,
    names: Sequence[str] | None = None,
    metric_names: Sequence[str] = ("psnr", "ssim"),
    device: str | torch.device = "cpu",
    progress: bool = False,
    tta: bool | int = False,
) -> list[dict[str, Any]]:
    """Score ``model`` on every HR image at every scale (scale-major order).

    Args:
        model: anything :func:`as_upscaler` accepts.
        images: HR ``(C, H, W)`` tensors (images in 0..1, or raw fields); their dtype is kept
            through LR generation (float64 photographs stay float64).
        scales: numbers, ``(r_v, r_h)`` pairs, scale spec strings (``"1.5x4"``) or
            :class:`LQSize` settings.
        kind: ``"image"`` or a field kind (``"array"``/``"field"``); see :func:`score`.
        bicubic: also score MATLAB bicubic from the same LR (``bicubic_<metric>`` columns).
        names: one label per image (default ``"0"``, ``"1"``, ...).
        metric_names: metrics to compute.
        device: where a network runs.
        progress: show a progress bar.
        tta: score the model's test-time self-ensemble instead
            (:func:`metasr.inference.self_ensemble`: ``True`` or 2, 4, 8 transforms, grid-exact
            ones only); the bicubic baseline stays plain.

    Returns:
        One dict per (scale, image): ``scale`` (label), ``image``, ``r_v``, ``r_h``, the metrics
        and, with ``bicubic``, ``bicubic_<metric>``.

    Raises:
        ValueError: a bad scale, an image too small for it, a bad ``tta``, or an output of the
            wrong size.
    """
    from tqdm import tqdm

    from .inference import self_ensemble, tta_count

    n_tta = tta_count(tta)
    up = as_upscaler(model, device)
    settings = [_setting(s) for s in scales]
    if not settings:
        raise ValueError("evaluate: no scales given")
    labels = list(names) if names is not None else [str(i) for i in range(len(images))]
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} names for {len(images)} images")
    # Resolve every (setting, image) to a scale first, so that an image too small for a scale
    # fails before any model runs.
    plan: list[tuple[str, str, torch.Tensor, Scale]] = []
    for setting, label in settings:
        for name, hr in zip(labels, images, strict=True):
            if isinstance(setting, LQSize):
                _, _, r_v, r_h = resolve_output_size(
                    setting.h, setting.w, size=(hr.shape[-2], hr.shape[-1])
                )
                scale: Scale = (r_v, r_h)
            else:
                scale = setting
            lq_size_for(hr.shape[-2], hr.shape[-1], scale)
            plan.append((label, name, hr, scale))
    rows: list[dict[str, Any]] = []
    for label, name, hr, scale in tqdm(plan, desc="eval", unit="img", disable=not progress):
        lq, gt = bicubic_pair(hr, scale)
        if kind == "image":
            lq = metrics.quantize_8bit(lq)
        size = (gt.shape[-2], gt.shape[-1])
        row: dict[str, Any] = {"scale": label, "image": name, "r_v": scale[0], "r_h": scale[1]}
        if n_tta == 1:
            sr = up.fn(lq[None], scale, size)
        else:
            sr = self_ensemble(up.fn, lq[None], scale, size, n_tta)
        row.update(score(sr[0], gt, scale, kind, metric_names))
        if bicubic:
            base = score(_bicubic(lq, scale, size), gt, scale, kind, metric_names)
            row.update({f"bicubic_{k}": v for k, v in base.items()})
        rows.append(row)
    return rows


def summarize(
    rows: Sequence[Mapping[str, Any]], metric_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The per-scale table: one row per ``scale`` label (first-seen order) and a ``mean`` row.

    Each scale row has ``scale``, ``images`` (how many rows it averages) and the mean of every
    metric; with ``psnr`` and ``bicubic_psnr`` also ``delta_psnr``. The ``mean`` row averages the
    scale rows (each scale weighted equally, as BasicSR's "best" tracks it) and sums ``images``.

    Args:
        rows: per-image rows (:func:`evaluate`, or any dicts with ``scale`` and metric values).
        metric_names: metric columns; default: every key but ``scale``, ``image``, ``r_v``,
            ``r_h``, ``images``.
    """
    if not rows:
        raise ValueError("summarize: no rows")
    if metric_names is None:
        skip = {"scale", "image", "r_v", "r_h", "images"}
        metric_names = [k for k in rows[0] if k not in skip]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["scale"]), []).append(r)
    table: list[dict[str, Any]] = []
    for label, members in groups.items():
        out: dict[str, Any] = {"scale": label, "images": len(members)}
        for m in metric_names:
            out[m] = sum(float(r[m]) for r in members) / len(members)
        if "psnr" in out and "bicubic_psnr" in out:
            out["delta_psnr"] = out["psnr"] - out["bicubic_psnr"]
        table.append(out)
    mean: dict[str, Any] = {"scale": "mean", "images": sum(r["images"] for r in table)}
    for key in table[0]:
        if key not in ("scale", "images"):
            mean[key] = sum(r[key] for r in table) / len(table)
    table.append(mean)
    return table


def finite_or_none(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with infinite or NaN values (PSNR of identical images) as ``None``, for JSON."""
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]


def write_results(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    csv_path: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    header: Mapping[str, Any] | None = None,
    **row_lists: Sequence[Mapping[str, Any]],
) -> None:
    """Write a results table as CSV (``columns`` only) and/or JSON (``header`` entries, the
    rows under ``"results"`` and each of ``row_lists`` under its name), creating folders.

    JSON has no infinity or NaN: such values are written as ``null``.
    """
    import csv
    import io
    import json
    from pathlib import Path

    from .io import atomic_write_text

    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path, buffer.getvalue())
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = dict(header or {})
        payload["results"] = finite_or_none(rows)
        payload.update({name: finite_or_none(r) for name, r in row_lists.items()})
        atomic_write_text(json_path, json.dumps(payload, indent=2))
