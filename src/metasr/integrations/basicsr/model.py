"""``MetaSRModel``: BasicSR's ``SRModel`` with the scale passed to the network.

Differences from ``SRModel``:

* Data is in 0..1 as everywhere in BasicSR; networks that take ``[0, img_range]`` (MetaRDN,
  MetaEDSR; 255 in the official recipe) get ``lq · img_range`` and their output is divided back,
  so losses and metrics are in 0..1 units whatever the network's convention.
* :meth:`feed_data` reads the batch's ``scale`` (``(N, 2)``, identical rows, from the metasr
  datasets; falls back to the option file's top-level ``scale`` for BasicSR's own datasets) and
  every forward pass is ``net_g(lq, scale=(r_v, r_h))``.
* Validation/test evaluates each scale of a :class:`MetaSRTestDataset` separately: PSNR/SSIM per
  scale (border ``ceil(r_v)``/``ceil(r_h)``, Y channel for RGB, raw values for ``.npy`` fields),
  logged as a table, sent to tensorboard as ``metrics/<set>/<metric>@<scale>``, and — in
  ``metasr test`` — written to ``results/<name>/<set>_metrics.{csv,json}``. The number tracked
  as "best" is the mean over scales.
* Checkpoints also store the ``network_g`` options (``"metasr_network"``), so
  ``metasr eval --model net_g_latest.pth`` rebuilds the network without the option file.
* **Fields** (:mod:`metasr.climate.fields`: batches carrying ``lq_lat``/``lq_lon``/``gt_lat``/
  ``gt_lon``): the network is called with ``coords=CoordinateGrid(...)`` from the batch instead
  of ``scale`` (training and validation), on values normalised with the model's
  :class:`~metasr.climate.FieldStats` (the ``field_stats`` option, else those of the
  training :class:`~metasr.climate.fields.FieldDataset`, else the pretrained checkpoint's), which
  every saved checkpoint stores under ``"field_stats"`` so ``metasr upscale`` applies them.
  Validation de-normalises the output and scores it in the field's units with the climate
  metrics (``type: weighted_rmse | weighted_mae | weighted_bias | pearson_correlation``,
  option ``weights: coslat | area``), per ratio.
* Mixed precision: ``train: {autocast: bfloat16}`` runs each training forward under
  ``torch.autocast`` in bfloat16 (CPU and CUDA; no gradient scaler is needed for bfloat16) and
  takes the losses on the float32 cast of the output. Parameters, optimizer state, validation,
  ``metasr test`` and saved checkpoints stay float32. On a CPU with AMX/AVX512-BF16 a
  MetaEDSR step takes 0.5–0.8× its float32 time (docs/benchmarks.md); the output itself is
  rounded to bfloat16 (about 1/256 of its value), so a recipe ends with a float32 stage where
  that rounding would matter.
* Distributed (``--launcher pytorch|slurm``): DDP on CPU (gloo) as well as CUDA, every iteration
  checks that all ranks train the same scale and LR size, and every checkpoint that all ranks
  hold bit-identical parameters (:mod:`.distributed`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import OrderedDict
from os import path as osp
from typing import Any

import numpy as np
import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import master_only
from tqdm import tqdm

from ...checkpoints import NETWORK_KEY, network_value_range
from ...climate.stats import STATS_KEY, FieldStats, training_checkpoint_stats
from ...data.files import write_image
from ...data.scales import Scale, format_scale, to_scale
from ...evaluate import summarize
from ...geometry import CoordinateGrid
from ...io import atomic_write, atomic_write_text
from ...metrics import format_table, quantize_8bit
from .distributed import check_ranks_agree, check_replicas_identical, wrap_ddp
from .metrics import calculate_psnr_metasr, calculate_ssim_metasr

__all__ = ["MetaSRModel"]

_OWN_METRICS = {
    "calculate_psnr_metasr": calculate_psnr_metasr,
    "calculate_ssim_metasr": calculate_ssim_metasr,
}


#: Climate metrics a field validation can name (``type``), from :mod:`metasr.climate.metrics`.
FIELD_METRICS = ("weighted_rmse", "weighted_mae", "weighted_bias", "pearson_correlation")

#: Keys of a batch that carries coordinates (:mod:`metasr.climate.fields`).
_COORD_KEYS = ("lq_lat", "lq_lon", "gt_lat", "gt_lon")

#: ``train: autocast`` values: the name in the option file → the autocast dtype.
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _autocast_of_options(opt: dict[str, Any]) -> torch.dtype | None:
    """The ``train: autocast`` dtype of the options (None: off), refusing unknown names.

    float16 is refused on purpose: it needs a gradient scaler, which this model does not run.
    """
    value = (opt.get("train") or {}).get("autocast")
    if value in (None, False, "none", "off", "float32"):
        return None
    if not isinstance(value, str) or value not in AUTOCAST_DTYPES:
        raise ValueError(
            f"train: autocast: {value!r} is not supported; use bfloat16 (or leave it out for "
            "float32 training)"
        )
    return AUTOCAST_DTYPES[value]


def _batch_coords(data: dict[str, Any]) -> CoordinateGrid | None:
    """The one :class:`CoordinateGrid` of a field batch (None without coordinates).

    Raises:
        ValueError: the samples of the batch have different coordinates.
    """
    if not all(k in data for k in _COORD_KEYS):
        return None
    axes = []
    for k in _COORD_KEYS:
        a = torch.as_tensor(data[k], dtype=torch.float64)
        a = a.reshape(1, -1) if a.dim() == 1 else a
        if not bool((a == a[0]).all()):
            raise ValueError(
                f"samples of one batch have different {k}; a batch shares one coordinate grid "
                "(MetaSRFieldDataset places every sample of a batch alike)"
            )
        axes.append(tuple(a[0].tolist()))
    wrap = data.get("periodic_lon", True)
    wrap = bool(torch.as_tensor(wrap).reshape(-1)[0])
    return CoordinateGrid(*axes, periodic_lon=wrap)


def _stats_of_options(opt: dict[str, Any]) -> FieldStats | None:
    """The model's field statistics from the options (see the module docstring), or None."""
    from ...climate.fields import field_stats_for, stats_from_option

    given = stats_from_option(opt.get("field_stats"))
    if given is not None:
        return given
    train = (opt.get("datasets") or {}).get("train") or {}
    if train.get("type") == "MetaSRFieldDataset":
        return field_stats_for(train)
    pretrained = (opt.get("path") or {}).get("pretrain_network_g")
    if pretrained and osp.isfile(pretrained):
        return training_checkpoint_stats(pretrained)
    return None


def _batch_scale(data: dict[str, Any], fallback: object) -> Scale:
    """The one ``(r_v, r_h)`` of a batch; ``ValueError`` if its samples disagree."""
    scale = data.get("scale")
    if scale is None:
        if fallback is None:
            raise ValueError(
                "the batch has no 'scale' and the options no top-level 'scale'; use "
                "MetaSRTrainDataset/MetaSRTestDataset or set 'scale'"
            )
        return to_scale(fallback)
    s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 2)
    if not bool((s == s[0]).all()):
        raise ValueError(
            "samples of one batch have different scales; Meta-Upscale needs one scale per batch "
            "(MetaSRTrainDataset draws one per batch)"
        )
    return float(s[0, 0]), float(s[0, 1])


class MetaSRModel(SRModel):
    """SR model for arbitrary (asymmetric) scales; see the module docstring."""

    scale: Scale
    coords: CoordinateGrid | None = None
    field_stats: FieldStats | None = None

    def __init__(self, opt: dict[str, Any]) -> None:
        # Before SRModel's __init__, which may already validate (nothing runs a batch there).
        self.field_stats = _stats_of_options(opt)
        self.autocast_dtype = _autocast_of_options(opt) if opt.get("is_train") else None
        super().__init__(opt)
        if self.field_stats is not None:
            s = self.field_stats
            get_root_logger().info(
                f"Field statistics: {s.variables[0]} mean {s.mean[0]:.6g} std {s.std[0]:.6g} "
                f"{s.units[0]} ({s.grid})"
            )

    # -- data and forward ------------------------------------------------------------------

    def feed_data(self, data: dict[str, Any]) -> None:
        """Move ``lq``/``gt`` to the device and record the batch's ``scale`` (and coordinates).

        A field batch (with coordinates) is normalised with the model's statistics here.
        """
        super().feed_data(data)
        self.scale = _batch_scale(data, self.opt.get("scale"))
        self.coords = _batch_coords(data)
        if self.coords is not None:
            if self.field_stats is None:
                raise ValueError(
                    "a field batch needs normalisation statistics: train with "
                    "MetaSRFieldDataset, or set field_stats: {mean, std, units} in the options"
                )
            mean, std = self.field_stats.mean[0], self.field_stats.std[0]
            self.lq = (self.lq - mean) / std
            if hasattr(self, "gt"):
                self.gt = (self.gt - mean) / std

    def denormalize_field(self, x: torch.Tensor) -> torch.Tensor:
        """Network units → the field's (identity without statistics)."""
        if self.field_stats is None:
            return x
        return x * self.field_stats.std[0] + self.field_stats.mean[0]

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        """BasicSR's, without its CUDA assumption (DDP on the CPU with gloo works too)."""
        return wrap_ddp(net, self.opt, self.device)

    def _run(self, net: torch.nn.Module, lq: torch.Tensor) -> torch.Tensor:
        """``net`` at the batch's scale on 0..1 data, scaled to the network's value range."""
        gain = network_value_range(self.get_bare_model(net))
        # A field batch places its output by latitude/longitude; photos by the scale.
        where = {"scale": self.scale} if self.coords is None else {"coords": self.coords}
        if gain == 1.0:
            return net(lq, **where)
        return net(lq * gain, **where) / gain

    def optimize_parameters(self, current_iter: int) -> None:
        """One step of pixel (and optional perceptual) loss at the batch's scale."""
        if self.opt.get("dist"):
            check_ranks_agree(current_iter, self.scale, self.lq.shape[-2:], self.device)
        self.optimizer_g.zero_grad()
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            output = self._run(self.net_g, self.lq)
        # Losses in float32 whatever the forward's precision (autocast is off here).
        self.output = output.float()
        loss_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
        l_total = self.output.new_zeros(())
        if self.cri_pix:
            l_pix = self.cri_pix(self.output, self.gt)
            l_total = l_total + l_pix
            loss_dict["l_pix"] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                l_total = l_total + l_percep
                loss_dict["l_percep"] = l_percep
            if l_style is not None:
                l_total = l_total + l_style
                loss_dict["l_style"] = l_style
        l_total.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        # The scale of the logged batch, so a log line says which scale its loss belongs to.
        self.log_dict["r_v"], self.log_dict["r_h"] = self.scale
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """Forward ``lq`` at the batch's scale without gradients (EMA network if present)."""
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self._run(net, self.lq)
        if was_training and net is self.net_g:
            self.net_g.train()

    # -- validation --------------------------------------------------------------------------

    def _metric(
        self, name: str, mopt: dict[str, Any], sr: torch.Tensor, gt: torch.Tensor, kind: str
    ) -> float:
        mopt = dict(mopt)
        mtype = mopt.pop("type")
        mopt.pop("better", None)
        if mtype in FIELD_METRICS:
            if kind != "field" or self.coords is None:
                raise ValueError(f"metric {name!r} ({mtype}) scores lat/lon fields only")
            from ...climate import metrics as cm
            from ...climate.grids import Grid

            grid = Grid.from_coords(self.coords.dst_lat, self.coords.dst_lon)
            fn = getattr(cm, mtype)
            # One field per item: the mean over channels of the (C,) per-channel scores.
            return float(np.mean(fn(sr.double().numpy(), gt.double().numpy(), grid, **mopt)))
        if kind == "field":
            kind = "array"
        if mtype in _OWN_METRICS:
            if kind == "array":
                mopt.setdefault("data_range", "gt")
            return _OWN_METRICS[mtype](sr, gt, scale=self.scale, **mopt)
        if kind == "array":
            raise ValueError(
                f"metric {name!r} ({mtype}) works on 8-bit images; for .npy fields use "
                "calculate_psnr_metasr / calculate_ssim_metasr"
            )
        # BasicSR's own metrics: its uint8 HWC BGR convention, integer crop_border.
        data = {"img": tensor2img([sr]), "img2": tensor2img([gt]), "scale": self.scale}
        return float(calculate_metric(data, {"type": mtype, **mopt}))

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img) -> None:
        """Evaluate every item of ``dataloader``; metrics per scale (see module docstring)."""
        dataset = dataloader.dataset
        dataset_name = dataset.opt["name"]
        kind = getattr(dataset, "kind", "image")
        metrics_opt: dict[str, Any] = self.opt["val"].get("metrics") or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            self._initialize_best_metric_results(dataset_name)
        records: list[dict[str, Any]] = []  # one per item with metrics: scale label + values
        pbar = tqdm(total=len(dataloader), unit="image") if self.opt["val"].get("pbar") else None
        for val_data in dataloader:
            img_name = (
                osp.splitext(osp.basename(val_data["gt_path"][0]))[0]
                if ("gt_path" in val_data)
                else osp.splitext(osp.basename(val_data["lq_path"][0]))[0]
            )
            self.feed_data(val_data)
            self.test()
            label = format_scale(self.scale)
            sr = self.output.detach().float().cpu()[0]
            gt = self.gt.detach().float().cpu()[0] if hasattr(self, "gt") else None
            if self.coords is not None:
                # Scores in the field's units (K, m), as metasr eval gives them.
                sr = self.denormalize_field(sr)
                gt = self.denormalize_field(gt) if gt is not None else None
            elif hasattr(dataset, "denormalize"):
                sr = dataset.denormalize(sr)
                gt = dataset.denormalize(gt) if gt is not None else None
            if kind == "image":
                # Scores are for the 8-bit image a user would save (as BasicSR's tensor2img).
                sr = quantize_8bit(sr)
            if gt is not None and sr.shape != gt.shape:
                # Paired LR files can give an output a few pixels off the HR: compare the common
                # top-left region (the grids of both start at the top-left corner).
                h = min(sr.shape[-2], gt.shape[-2])
                w = min(sr.shape[-1], gt.shape[-1])
                sr, gt = sr[..., :h, :w], gt[..., :h, :w]
            if save_img:
                ext = "png" if kind == "image" else "npy"
                if self.opt["is_train"]:
                    out = osp.join(
                        self.opt["path"]["visualization"],
                        img_name,
                        f"{img_name}_x{label}_{current_iter}.{ext}",
                    )
                else:
                    suffix = self.opt["val"].get("suffix") or self.opt["name"]
                    out = osp.join(
                        self.opt["path"]["visualization"],
                        dataset_name,
                        f"{img_name}_x{label}_{suffix}.{ext}",
                    )
                write_image(out, sr)
            if with_metrics and gt is not None:
                record: dict[str, Any] = {"scale": label}
                for name, mopt in metrics_opt.items():
                    record[name] = self._metric(name, mopt, sr, gt, kind)
                records.append(record)
            for attr in ("gt", "lq", "output"):
                if hasattr(self, attr):
                    delattr(self, attr)
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f"Test {img_name} x{label}")
        if pbar is not None:
            pbar.close()
        if not with_metrics or not records:
            return
        # The per-scale table of metasr.evaluate: scale rows in first-seen order, then the mean
        # over scales (each scale weighted equally), which is what "best" tracks.
        metrics = list(metrics_opt)
        rows = summarize(records, metrics)
        self.scale_results = OrderedDict(
            (r["scale"], {m: r[m] for m in metrics}) for r in rows[:-1]
        )
        self.metric_results = {m: rows[-1][m] for m in metrics}
        for m, v in self.metric_results.items():
            self._update_best_metric_result(dataset_name, m, v, current_iter)
        self._log_scale_results(dataset_name, current_iter, rows, metrics, tb_logger)

    def _log_scale_results(self, dataset_name, current_iter, rows, metrics, tb_logger) -> None:
        table = format_table(rows, ["scale", "images", *metrics])
        best = "".join(
            f"\n\tBest {m}: {self.best_metric_results[dataset_name][m]['val']:.4f} @ "
            f"{self.best_metric_results[dataset_name][m]['iter']} iter"
            for m in metrics
        )
        get_root_logger().info(f"Validation {dataset_name} @ {current_iter}\n{table}{best}")
        if tb_logger:
            for label, vals in self.scale_results.items():
                for m, v in vals.items():
                    tb_logger.add_scalar(f"metrics/{dataset_name}/{m}@{label}", v, current_iter)
            for m, v in self.metric_results.items():
                tb_logger.add_scalar(f"metrics/{dataset_name}/{m}", v, current_iter)
        if not self.opt["is_train"]:
            self._write_results(dataset_name, rows, metrics)

    @master_only
    def _write_results(self, dataset_name: str, rows: list[dict[str, Any]], metrics) -> None:
        root = self.opt["path"]["results_root"]
        os.makedirs(root, exist_ok=True)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=["scale", "images", *metrics])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(osp.join(root, f"{dataset_name}_metrics.csv"), buffer.getvalue())
        atomic_write_text(
            osp.join(root, f"{dataset_name}_metrics.json"),
            json.dumps({"dataset": dataset_name, "results": rows}, indent=2),
        )

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, epoch: int, current_iter: int) -> None:
        """As ``SRModel.save``; distributed, first check that all replicas are identical."""
        if self.opt.get("dist"):
            check_replicas_identical(
                self.get_bare_model(self.net_g), current_iter, get_root_logger()
            )
        super().save(epoch, current_iter)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key="params") -> None:
        """As BasicSR's, plus the ``network_g`` options under ``"metasr_network"``."""
        label = "latest" if current_iter == -1 else current_iter
        save_path = osp.join(self.opt["path"]["models"], f"{net_label}_{label}.pth")
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError("save_network: one param_key per network")
        save_dict: dict[str, Any] = {}
        for net_, key in zip(nets, keys, strict=True):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict(
                (k.removeprefix("module."), v.detach().cpu()) for k, v in state.items()
            )
        save_dict[NETWORK_KEY] = _plain(self.opt["network_g"])
        if self.field_stats is not None:
            save_dict[STATS_KEY] = self.field_stats.to_json()
        # Atomic: a run killed while saving keeps the previous net_g_latest.pth.
        atomic_write(save_path, lambda tmp: torch.save(save_dict, tmp))

    @master_only
    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """As BasicSR's (optimizer and scheduler states for resuming), written atomically."""
        if current_iter == -1:
            return
        state: dict[str, Any] = {"epoch": epoch, "iter": current_iter}
        state["optimizers"] = [o.state_dict() for o in self.optimizers]
        state["schedulers"] = [s.state_dict() for s in self.schedulers]
        path = osp.join(self.opt["path"]["training_states"], f"{current_iter}.state")
        atomic_write(path, lambda tmp: torch.save(state, tmp))


def _plain(value: Any) -> Any:
    """Option values as plain dicts/lists (loadable with ``torch.load(weights_only=True)``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
