"""Arbitrary-scale SR datasets: random training crops with one scale per batch, and test sets.

Both datasets take a BasicSR-style option dict (so they register into BasicSR unchanged) or the
same options as keyword arguments.

**One scale per batch.** A Meta-Upscale batch must share ``(r_v, r_h)`` (and LR patch size). The
training dataset implements ``__getitems__`` (PyTorch's batched fetch, used by every
``DataLoader`` with automatic batching, including BasicSR's ``build_dataloader``): it draws one
:class:`BatchSpec` and builds all samples of the batch with it. For plain PyTorch there is also
:class:`ScaleBatchSampler`, which yields ``(index, spec)`` pairs, so the spec is chosen by the
sampler (reproducible with its own ``rng``). Samples carry ``scale`` (float64 ``(2,)``), so the
default collate gives ``batch["scale"]`` of shape ``(N, 2)`` with identical rows.

**Sizes.** For LR patch ``p`` at ``(r_v, r_h)`` the HR crop is ``H = floor(p·r_v + 1e-6)`` rows
and ``W = floor(p·r_h + 1e-6)`` columns, exactly what :func:`metasr.resolve_output_size` gives
for the model's output, and the LR is MATLAB bicubic with the nominal factors
``(1/r_v, 1/r_h)`` (:func:`metasr.data.imresize`), which yields exactly ``p×p``. Whole images are
cropped to ``floor(floor(H/r)·r)`` likewise (:func:`~metasr.data.scales.lq_size_for`).

**Paired LR folders.** ``dataroot_lq`` may name pre-made LR images instead, as a template with
``{r_v}``, ``{r_h}`` and ``{scale}`` (the label ``2`` / ``1.5x4``), e.g.
``datasets/DIV2K/LR_bicubic/X{r_v:.2f}`` for Meta-SR's MATLAB-made folders; the LR file's stem
is ``lq_filename_tmpl`` (default ``"{stem}"``, e.g. ``"{stem}x{r_v:.2f}"``). Training crops then
take an LR patch at ``(y, x)`` and the HR rows from ``floor(y·r_v)``. The scale sampler must
only produce scales that have folders (a ``choice`` or ``grid`` sampler). A paired LR must have
the size its scale implies: per axis ``|h − H/r_v|`` at most :data:`PAIRED_LR_TOLERANCE` pixels
or that fraction of ``H/r_v``, whichever is larger (MATLAB's ``ceil``, the protocol's ``floor``
and mod-cropped HR all pass); an LR folder of another scale, or of thumbnails, is refused with
the file names and sizes instead of being scored silently.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..geometry import resolve_output_size
from ..io import ARRAY_SUFFIXES, IMAGE_SUFFIXES
from ..metrics import quantize_8bit
from ..validation import check_int
from .files import data_kind, list_files, read_sample
from .resize import imresize
from .scales import (
    Scale,
    build_scale_sampler,
    format_scale,
    lq_size_for,
    parse_scale_list,
    to_scale,
)

__all__ = [
    "PAIRED_LR_TOLERANCE",
    "ArbitraryScaleDataset",
    "ArbitraryScaleTestDataset",
    "BatchSpec",
    "ScaleBatchSampler",
    "bicubic_pair",
]

_EPS = 1e-6

#: How far a paired LR's side may be from ``HR side / scale``: 2 pixels, or 2 % of the side
#: when that is more (the module docstring says why).
PAIRED_LR_TOLERANCE = (2, 0.02)


@dataclass(frozen=True)
class BatchSpec:
    """What one batch shares: the scale, the LR patch side (None: whole images) and, for
    datasets that place every sample of a batch alike (the latitude band of
    :class:`metasr.climate.fields.FieldDataset`), a position ``offset`` in [0, 1)."""

    scale: Scale
    lq_patch: int | None
    offset: float | None = None


def bicubic_pair(gt: torch.Tensor, scale: Scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation protocol's LR of a whole HR image, and the HR cropped to match.

    The LR has ``h = floor(H/r_v + 1e-6)`` rows and ``w = floor(W/r_h + 1e-6)`` columns and is
    MATLAB bicubic with the nominal factors ``(1/r_v, 1/r_h)``; the HR is cropped to the model's
    output size for that LR (:func:`~metasr.data.scales.lq_size_for`). Not quantised: callers
    round images to 8 bits (:func:`metasr.metrics.quantize_8bit`), not ``.npy`` fields.

    Args:
        gt: ``(C, H, W)`` or ``(N, C, H, W)``, any float dtype (kept).
        scale: ``(r_v, r_h)``.

    Returns:
        ``(lq (…, C, h, w), gt (…, C, H', W'))`` with ``H' = floor(h·r_v + 1e-6) ≤ H``.
    """
    h, w, H, W = lq_size_for(gt.shape[-2], gt.shape[-1], scale)
    gt = gt[..., :H, :W]
    return imresize(gt, scale=(1.0 / scale[0], 1.0 / scale[1]), size=(h, w)), gt


def _check_paired_size(
    lq: torch.Tensor, gt: torch.Tensor, scale: Scale, lq_path: Path, gt_path: Path
) -> None:
    """Refuse a paired LR whose size does not match ``HR size / scale`` (per axis)."""
    pixels, fraction = PAIRED_LR_TOLERANCE
    for axis, r in zip((-2, -1), scale, strict=True):
        want = gt.shape[axis] / r
        if abs(lq.shape[axis] - want) > max(pixels, fraction * want):
            h, w = lq.shape[-2:]
            H, W = gt.shape[-2:]
            raise ValueError(
                f"paired LR {lq_path} is {h}x{w}, but its HR {gt_path.name} ({H}x{W}) at scale "
                f"{format_scale(scale)} needs about {H / scale[0]:.0f}x{W / scale[1]:.0f}; "
                "is dataroot_lq the folder of another scale?"
            )


def _merge_opts(opt: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(opt or {})
    merged.update(kwargs)
    return merged


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_patch_range(patch: object, minimum: int, expected: str) -> tuple[int, int] | None:
    """An ``lq_patch_size`` option (``n``, ``[min, max]`` or ``None``) as ``(min, max)``.

    Args:
        patch: the option's value.
        minimum: the smallest size allowed.
        expected: the error message's start, saying what is allowed.

    Returns:
        ``(lo, hi)`` with ``minimum <= lo <= hi``, or ``None`` for ``None`` (whole images).

    Raises:
        ValueError: ``f"{expected}, got {patch!r}"`` for anything else.
    """
    if patch is None:
        return None
    lo, hi = (patch, patch) if isinstance(patch, int) else tuple(patch)  # type: ignore[arg-type]
    if not (isinstance(lo, int) and isinstance(hi, int) and minimum <= lo <= hi):
        raise ValueError(f"{expected}, got {patch!r}")
    return lo, hi


class SpecBatchedDataset(Dataset):
    """A training dataset whose every batch shares one :class:`BatchSpec` (scale, patch size).

    Subclasses define :meth:`draw_spec` and :meth:`sample`. DataLoader's batched fetch
    (``__getitems__``) draws one spec for the whole batch; a spec-giving sampler
    (:class:`ScaleBatchSampler`, the distributed one) passes ``(index, spec)`` pairs instead, so
    that every process of a step uses the same spec.
    """

    def draw_spec(self, rng: random.Random | None = None) -> BatchSpec:
        """The spec of one batch (``rng``: the caller's random stream; default the global one)."""
        raise NotImplementedError

    def sample(self, index: int, spec: BatchSpec) -> dict[str, Any]:
        """Training sample ``index`` made under ``spec``."""
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[object]) -> list[dict[str, Any]]:
        # Called by DataLoader with a whole batch of indices: one spec for all of them.
        if indices and isinstance(indices[0], tuple):
            return [self[i] for i in indices]
        spec = self.draw_spec()
        return [self.sample(int(i), spec) for i in indices]  # type: ignore[arg-type]

    def __getitem__(self, index: object) -> dict[str, Any]:
        if isinstance(index, tuple):  # (index, spec) from a spec-giving sampler
            idx, spec = index
            return self.sample(int(idx), spec)
        return self.sample(int(index), self.draw_spec())  # type: ignore[arg-type]


class _ScaleDataBase(Dataset):
    """Shared loading, normalisation and LR generation of both datasets."""

    def __init__(self, opt: dict[str, Any], default_quantize: bool = True) -> None:
        self.opt = opt
        roots = _as_list(opt.get("dataroot_gt"))
        if not roots:
            raise ValueError("dataset option 'dataroot_gt' (HR folder or file) is required")
        self.gt_paths: list[Path] = []
        for root in roots:
            self.gt_paths.extend(list_files(root, what="dataroot_gt"))
        self.kind = data_kind(self.gt_paths[0])
        if any(data_kind(p) != self.kind for p in self.gt_paths):
            raise ValueError("dataroot_gt mixes images and .npy arrays; use one kind")
        self.channels: int | None = opt.get("channels", 3)
        if self.channels not in (1, 3, None):
            raise ValueError(f"'channels' must be 1, 3 or null, got {self.channels!r}")
        self.lq_template: str | None = opt.get("dataroot_lq")
        self.lq_filename_tmpl: str = opt.get("lq_filename_tmpl", "{stem}")
        # 8-bit quantisation of generated LR images matches LR files saved as PNG (as in every
        # benchmark); gridded arrays keep full precision.
        self.quantize_lq = bool(opt.get("quantize_lq", default_quantize and self.kind == "image"))
        self.mean = self._stat(opt.get("mean"), "mean")
        self.std = self._stat(opt.get("std"), "std")
        if self.std is not None and bool((self.std <= 0).any()):
            raise ValueError("'std' must be > 0")
        self.use_cache = bool(opt.get("cache", False))
        self._cache: dict[str, torch.Tensor] = {}
        self._lq_dirs: dict[str, dict[str, Path]] = {}

    @staticmethod
    def _stat(value: object, what: str) -> torch.Tensor | None:
        if value is None:
            return None
        try:
            t = torch.tensor(value, dtype=torch.float32).reshape(-1, 1, 1)
        except (TypeError, ValueError):
            raise ValueError(f"'{what}' must be a number or a list of numbers") from None
        return t

    # -- loading ----------------------------------------------------------------------------

    def _load(self, path: Path) -> torch.Tensor:
        key = str(path)
        if key in self._cache:
            return self._cache[key]
        img = read_sample(path, self.channels)
        if self.use_cache:
            self._cache[key] = img
        return img

    def _lq_path(self, gt_path: Path, scale: Scale) -> Path:
        """The paired LR file of ``gt_path`` at ``scale`` (template ``dataroot_lq``)."""
        assert self.lq_template is not None
        fields = {"r_v": scale[0], "r_h": scale[1], "scale": format_scale(scale)}
        try:
            folder = Path(self.lq_template.format(**fields)).expanduser()
            stem = self.lq_filename_tmpl.format(stem=gt_path.stem, **fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"bad dataroot_lq / lq_filename_tmpl template ({exc}); fields: stem, r_v, r_h, "
                "scale"
            ) from None
        key = str(folder)
        if key not in self._lq_dirs:
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"dataroot_lq folder for scale {format_scale(scale)} does not exist: {folder}"
                )
            self._lq_dirs[key] = {
                p.stem: p
                for p in sorted(folder.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES
            }
        found = self._lq_dirs[key].get(stem)
        if found is None:
            raise FileNotFoundError(f"no LR file named {stem}.* in {folder} for {gt_path.name}")
        return found

    def _finish(self, lq: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise a generated LR image to 8 bits and apply ``mean``/``std``."""
        if self.quantize_lq:
            lq = quantize_8bit(lq)
        if self.mean is not None or self.std is not None:
            mean = self.mean if self.mean is not None else torch.zeros(1, 1, 1)
            std = self.std if self.std is not None else torch.ones(1, 1, 1)
            lq = (lq - mean) / std
            gt = (gt - mean) / std
        return lq.contiguous(), gt.contiguous()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo ``mean``/``std`` on a ``(..., C, H, W)`` tensor (identity without them)."""
        if self.std is not None:
            x = x * self.std.to(x)
        if self.mean is not None:
            x = x + self.mean.to(x)
        return x

    def _whole(self, index: int, scale: Scale) -> tuple[torch.Tensor, torch.Tensor, Path]:
        """Whole-image LR/HR pair at ``scale``: HR cropped to the model's output size."""
        gt_path = self.gt_paths[index]
        gt = self._load(gt_path)
        if self.lq_template is None:
            lq, gt = bicubic_pair(gt, scale)
            return lq, gt, gt_path
        lq_path = self._lq_path(gt_path, scale)
        lq = self._load(lq_path)
        _check_paired_size(lq, gt, scale, lq_path, gt_path)
        return lq, gt, lq_path


class ArbitraryScaleDataset(SpecBatchedDataset, _ScaleDataBase):
    """Training pairs: random HR crops, LR by per-axis bicubic (or paired LR), one scale a batch.

    Options (``opt`` dict or keyword arguments):

    * ``dataroot_gt``: HR folder(s) or file(s): images, or ``.npy`` arrays ``(H, W)``/``(C, H, W)``.
    * ``dataroot_lq``: optional paired-LR folder template (see module docstring);
      ``lq_filename_tmpl``: LR file stem, default ``"{stem}"``.
    * ``scale_sampler``: a scale distribution (:func:`metasr.data.build_scale_sampler`); default
      Meta-SR's ×1.1 … ×4.0 step 0.1.
    * ``lq_patch_size``: LR patch side ``p`` (Meta-SR: 50), or ``[min, max]`` drawn per batch,
      or null for whole images.
    * ``use_hflip``, ``use_vflip``, ``use_rot``: random flips and 90° rotation (rotation only at
      symmetric scales, where it cannot swap ``r_v`` and ``r_h``); defaults true, true, true.
    * ``channels``: 3 (RGB, default), 1, or null (as stored). ``quantize_lq``: round generated
      LR images to 8 bits (default true for images, false for arrays).
    * ``mean``, ``std``: optional normalisation (number or per channel) of LR and HR.
    * ``cache``: keep decoded files in memory (small datasets).

    Returns (per sample): ``lq`` ``(C, p, p)``, ``gt`` ``(C, H, W)``, ``scale`` float64 ``(2,)``,
    ``lq_path``, ``gt_path``.
    """

    def __init__(self, opt: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        opt = _merge_opts(opt, kwargs)
        super().__init__(opt)
        self.scale_sampler = build_scale_sampler(
            opt.get("scale_sampler", {"type": "grid", "min": 1.1, "max": 4.0, "step": 0.1})
        )
        self.patch_range = parse_patch_range(
            opt.get("lq_patch_size", 50),
            1,
            "'lq_patch_size' must be a positive integer or [min, max]",
        )
        self.use_hflip = bool(opt.get("use_hflip", True))
        self.use_vflip = bool(opt.get("use_vflip", True))
        self.use_rot = bool(opt.get("use_rot", True))

    def __len__(self) -> int:
        return len(self.gt_paths)

    def draw_spec(self, rng: random.Random | None = None) -> BatchSpec:
        """Draw the scale and LR patch size of one batch."""
        rng = rng or random
        scale = self.scale_sampler.sample(rng)
        patch = None if self.patch_range is None else rng.randint(*self.patch_range)
        return BatchSpec(scale=scale, lq_patch=patch)

    def sample(
        self, index: int, spec: BatchSpec, rng: random.Random | None = None
    ) -> dict[str, Any]:
        """Sample ``index`` at ``spec`` (random crop position and flips from ``rng``)."""
        rng = rng or random
        r_v, r_h = spec.scale
        if spec.lq_patch is None:
            lq, gt, lq_path = self._whole(index, spec.scale)
            if self.lq_template is not None:
                H, W, _, _ = resolve_output_size(lq.shape[-2], lq.shape[-1], scale=spec.scale)
                if gt.shape[-2] < H or gt.shape[-1] < W:
                    raise ValueError(
                        f"{self.gt_paths[index]} is {gt.shape[-2]}x{gt.shape[-1]}, smaller than "
                        f"its LR {lq.shape[-2]}x{lq.shape[-1]} at scale {format_scale(spec.scale)}"
                    )
                gt = gt[:, :H, :W]
            lq, gt = self._augment([lq, gt], spec.scale, rng)
        elif self.lq_template is None:
            lq, gt, lq_path = self._bicubic_crop(index, spec, rng)
        else:
            lq, gt, lq_path = self._paired_crop(index, spec, rng)
        lq, gt = self._finish(lq, gt)
        return {
            "lq": lq,
            "gt": gt,
            "scale": torch.tensor([r_v, r_h], dtype=torch.float64),
            "lq_path": str(lq_path),
            "gt_path": str(self.gt_paths[index]),
        }

    def _augment(
        self, imgs: list[torch.Tensor], scale: Scale, rng: random.Random
    ) -> list[torch.Tensor]:
        """The same random flips (and transposition, symmetric scales only) on every tensor."""
        hflip = self.use_hflip and rng.random() < 0.5
        vflip = self.use_vflip and rng.random() < 0.5
        rot = self.use_rot and scale[0] == scale[1] and rng.random() < 0.5
        out = []
        for t in imgs:
            if hflip:
                t = t.flip(-1)
            if vflip:
                t = t.flip(-2)
            if rot:
                t = t.transpose(-2, -1)
            out.append(t)
        return out

    def _bicubic_crop(
        self, index: int, spec: BatchSpec, rng: random.Random
    ) -> tuple[torch.Tensor, torch.Tensor, Path]:
        gt_path = self.gt_paths[index]
        img = self._load(gt_path)
        p = int(spec.lq_patch)  # type: ignore[arg-type]
        H, W, r_v, r_h = resolve_output_size(p, p, scale=spec.scale)
        Hi, Wi = img.shape[-2:]
        if Hi < H or Wi < W:
            raise ValueError(
                f"{gt_path} is {Hi}x{Wi}, smaller than the {H}x{W} HR crop that LR patch {p} "
                f"needs at scale {format_scale(spec.scale)}; lower lq_patch_size or the scales"
            )
        top = rng.randint(0, Hi - H)
        left = rng.randint(0, Wi - W)
        (gt,) = self._augment([img[:, top : top + H, left : left + W]], spec.scale, rng)
        lq = imresize(gt, scale=(1.0 / r_v, 1.0 / r_h), size=(p, p))
        return lq, gt, gt_path

    def _paired_crop(
        self, index: int, spec: BatchSpec, rng: random.Random
    ) -> tuple[torch.Tensor, torch.Tensor, Path]:
        gt_path = self.gt_paths[index]
        gt_img = self._load(gt_path)
        lq_path = self._lq_path(gt_path, spec.scale)
        lq_img = self._load(lq_path)
        _check_paired_size(lq_img, gt_img, spec.scale, lq_path, gt_path)
        p = int(spec.lq_patch)  # type: ignore[arg-type]
        H, W, r_v, r_h = resolve_output_size(p, p, scale=spec.scale)
        hl, wl = lq_img.shape[-2:]
        Hi, Wi = gt_img.shape[-2:]
        # LR top-left (y, x) maps to HR (floor(y·r_v), floor(x·r_h)); keep the HR crop inside.
        y_max = min(hl - p, math.floor((Hi - H) / r_v)) if Hi >= H else -1
        x_max = min(wl - p, math.floor((Wi - W) / r_h)) if Wi >= W else -1
        if y_max < 0 or x_max < 0:
            raise ValueError(
                f"{lq_path} ({hl}x{wl}) / {gt_path} ({Hi}x{Wi}) too small for LR patch {p} at "
                f"scale {format_scale(spec.scale)}"
            )
        y, x = rng.randint(0, y_max), rng.randint(0, x_max)
        ty, tx = math.floor(y * r_v + _EPS), math.floor(x * r_h + _EPS)
        lq = lq_img[:, y : y + p, x : x + p]
        gt = gt_img[:, ty : ty + H, tx : tx + W]
        lq, gt = self._augment([lq, gt], spec.scale, rng)
        return lq, gt, lq_path


class ArbitraryScaleTestDataset(_ScaleDataBase):
    """Whole images at a list of scales, for validation and testing (one item per image×scale).

    Options: ``dataroot_gt``, ``dataroot_lq`` / ``lq_filename_tmpl``, ``channels``,
    ``quantize_lq``, ``mean``/``std``, ``cache`` as in :class:`ArbitraryScaleDataset`, and
    ``scales``: a list (``[2, 3, 4, [1.5, 4]]``) or string (``"2,3,4,1.5x4"``); default
    ``[2, 3, 4]``. Items are ordered scale by scale.

    With generated LR the HR is cropped so that the model's output at ``scale`` has exactly its
    size. With paired LR files the model output and HR may differ by a few rows/columns; the
    evaluator compares their common top-left region.

    Returns (per item): ``lq`` ``(C, h, w)``, ``gt`` ``(C, H, W)``, ``scale`` float64 ``(2,)``,
    ``lq_path``, ``gt_path``.
    """

    def __init__(self, opt: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        opt = _merge_opts(opt, kwargs)
        super().__init__(opt)
        scales = opt.get("scales", [2, 3, 4])
        if isinstance(scales, str):
            self.scales = parse_scale_list(scales)
        else:
            self.scales = [to_scale(s) for s in _as_list(scales)]
        if not self.scales:
            raise ValueError("'scales' must list at least one scale")

    def __len__(self) -> int:
        return len(self.gt_paths) * len(self.scales)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        scale = self.scales[index // len(self.gt_paths)]
        img_idx = index % len(self.gt_paths)
        lq, gt, lq_path = self._whole(img_idx, scale)
        lq, gt = self._finish(lq, gt)
        return {
            "lq": lq,
            "gt": gt,
            "scale": torch.tensor(scale, dtype=torch.float64),
            "lq_path": str(lq_path),
            "gt_path": str(self.gt_paths[img_idx]),
        }


class ScaleBatchSampler(Sampler[list[tuple[int, BatchSpec]]]):
    """Batches of ``(index, spec)`` sharing one :class:`BatchSpec`, for a plain ``DataLoader``.

    Example::

        ds = ArbitraryScaleDataset(dataroot_gt="photos/", lq_patch_size=32,
                                   scale_sampler={"type": "uniform", "min": 1.1, "max": 4})
        dl = DataLoader(ds, batch_sampler=ScaleBatchSampler(ds, batch_size=8, seed=0))
        for batch in dl:   # batch["scale"][0] is this batch's (r_v, r_h)
            ...

    Args:
        dataset: the :class:`ArbitraryScaleDataset` (its ``draw_spec`` picks each batch's spec).
        batch_size: samples per batch.
        sampler: index order (default: a random permutation each epoch).
        drop_last: drop a final short batch.
        seed: seeds this sampler's own ``random.Random`` (scales and patch sizes).
    """

    def __init__(
        self,
        dataset: ArbitraryScaleDataset,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        drop_last: bool = True,
        seed: int | None = None,
    ) -> None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler if sampler is not None else torch.utils.data.RandomSampler(dataset)
        self.drop_last = drop_last
        self.rng = random.Random(seed)

    def __iter__(self) -> Iterator[list[tuple[int, BatchSpec]]]:
        batch: list[int] = []
        for idx in self.sampler:
            batch.append(int(idx))
            if len(batch) == self.batch_size:
                spec = self.dataset.draw_spec(self.rng)
                yield [(i, spec) for i in batch]
                batch = []
        if batch and not self.drop_last:
            spec = self.dataset.draw_spec(self.rng)
            yield [(i, spec) for i in batch]

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
