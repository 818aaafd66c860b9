"""Apply a loaded model to whole images and arrays: value scaling, channels, alpha, tiling.

* :func:`upscale_array`: a ``(C, h, w)`` array of image values (0..1) or field values.
* :func:`upscale_raster`: a :class:`metasr.io.Raster` read from a file (colour through the
  model, alpha bicubic, optional min-max normalisation of fields).
* :func:`upscale_alpha`: the alpha plane alone.
* :func:`estimate_upscale` / :func:`check_upscale_memory`: the memory a call of
  :func:`upscale_array` needs, and its refusal before any work when that is more than is free.
* :func:`self_ensemble` (``tta=`` of :func:`upscale_array`): test-time self-ensemble over the
  flips and transposes of the input (:data:`DIHEDRAL`, :func:`tta_transforms`).

Models come from :func:`metasr.checkpoints.load_model`. The conventions are listed in
``docs/usage.md``. Every public function checks its arguments (array type and layout, ``kind``,
``normalize``, the raster's sample type and alpha size) and raises one ``ValueError`` naming the
offending value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import LoadedModel
from .geometry import UpscaleRequest
from .io import Raster
from .precision import FLOAT32, Precision, plan_precision
from .tiling import DEFAULT_OVERLAP, is_tiled, plan_tiling, upscale
from .validation import ArgumentTypeError

__all__ = [
    "DIHEDRAL",
    "Dihedral",
    "UpscaleEstimate",
    "check_upscale_memory",
    "estimate_upscale",
    "self_ensemble",
    "tta_count",
    "tta_transforms",
    "upscale_alpha",
    "upscale_array",
    "upscale_raster",
]


@dataclass(frozen=True)
class UpscaleEstimate:
    """What :func:`estimate_upscale` counts for one input.

    Attributes:
        output_size: ``(H, W)``.
        host_bytes: the result and its copies on the host (float32 output, the division by the
            value range, per-channel means and the conversion for writing).
        work_bytes: the working set of the largest tile (the whole input without tiling) on the
            model's device: the backend's estimate of the Meta-Upscale head (output included),
            the network's output-sized copies and twice the head's input features (a lower
            bound of the backbone's, which depends on the architecture).
        device: the model's device.
    """

    output_size: tuple[int, int]
    host_bytes: int
    work_bytes: int
    device: torch.device


def estimate_upscale(
    loaded: LoadedModel,
    in_shape: tuple[int, int, int],
    request: UpscaleRequest,
    tile: int = 0,
    overlap: int | None = DEFAULT_OVERLAP,
    tta: bool | int = False,
) -> UpscaleEstimate:
    """Memory that :func:`upscale_array` of an input ``(C, h, w)`` needs, computed from shapes.

    Nothing of the output's size is allocated: the request is checked against the pixel cap
    before its geometry's per-row/column tables exist, and the head is planned
    (:func:`metasr.ops.meta_upscale.plan`) for a stand-in of its features.

    With ``tta`` (:func:`self_ensemble`), two more float32 results are counted where the result
    lives (the host when tiled, else the model's device): the accumulator, and the inverted
    term beside the term that is being added.

    Raises:
        ValueError: for a bad request, ``tta`` or an output over the pixel cap, or when no
            backend can run the head for reasons other than memory.
    """
    from .ops.meta_upscale import plan

    C, h, w = in_shape
    model = loaded.model
    p = next(model.parameters())
    n_tta = tta_count(tta)
    # The call as tiling.upscale will run it: whole, or in tiles (a periodic model's are
    # full-width row bands), of which the largest is measured.
    cut = plan_tiling(model, request, h, w, tile, overlap)
    H, W = cut.geometry.H, cut.geometry.W
    n = 1 if C == loaded.in_channels else C
    cout = loaded.out_channels
    ensemble = 2 * n * cout * H * W * 4 if n_tta > 1 else 0
    host = 2 * n * cout * H * W * 4 + 3 * C * H * W * 4
    request, in_hw = cut.request, (h, w)
    if cut.tiled:
        request = cut.tile_request(*cut.largest())
        in_hw = request.region.in_shape
        host += ensemble  # tiles are assembled on the host, so the ensemble's sums are there
    else:
        host -= n * cout * H * W * 4  # the whole-image result is the device's output, moved
    p2w = model.pos2weight
    features = p.new_empty(()).expand(n, p2w.in_channels, *in_hw)
    head = plan(features, p2w, request, getattr(model, "backend", "auto"), check_memory=False)
    item = head.probe.element_size()
    out = n * cout * head.geometry.H * head.geometry.W * item
    features_bytes = n * p2w.in_channels * in_hw[0] * in_hw[1] * item
    work = head.estimate_bytes() + out * (3 if model.bicubic_residual else 1)
    if not cut.tiled:
        work += ensemble  # a whole-image result is summed on the model's device
    return UpscaleEstimate((H, W), host, work + 2 * features_bytes, p.device)


def check_upscale_memory(
    loaded: LoadedModel,
    in_shape: tuple[int, int, int],
    request: UpscaleRequest,
    tile: int = 0,
    overlap: int | None = DEFAULT_OVERLAP,
    tta: bool | int = False,
) -> UpscaleEstimate | None:
    """Refuse, before any work, an :func:`upscale_array` call that cannot fit in free memory.

    Tiling is suggested only when a smaller tile would fit: not when the result alone is too
    large for the host, nor when the tile is already as small as the suggestions go (64).

    Returns:
        The :func:`estimate_upscale` of the call, when it fits (or free memory is unknown);
        ``None`` for an exported (ONNX) model, whose runtime plans its own memory and which
        checks its one input size and request itself.

    Raises:
        ValueError: one line with the estimate and the free memory, as :func:`estimate_upscale`.
    """
    from .ops.memory import available_memory_bytes, gib

    if loaded.format == "onnx":
        return None
    est = estimate_upscale(loaded, in_shape, request, tile, overlap, tta)
    cpu = torch.device("cpu")
    on_host = est.device.type == "cpu"

    def fits(e: UpscaleEstimate) -> bool:
        free_host = available_memory_bytes(cpu)
        host_need = e.host_bytes + (e.work_bytes if on_host else 0)
        if free_host is not None and host_need > free_host:
            return False
        if not on_host:
            free_dev = available_memory_bytes(e.device)
            return free_dev is None or e.work_bytes <= free_dev
        return True

    if fits(est):
        return est
    (H, W), (_, h, w) = est.output_size, in_shape
    tiled = is_tiled(loaded.model, tile, h, w)
    where = "per tile" if tiled else "whole"
    msg = (
        f"upscaling {h}x{w} to {H}x{W} needs about {gib(est.host_bytes)} on the host for the "
        f"result and {gib(est.work_bytes)} on {est.device.type} to compute it ({where}), but "
        f"{est.device.type} has {gib(available_memory_bytes(est.device) or 0)} free"
    )
    if not on_host:
        msg += f" and the host {gib(available_memory_bytes(cpu) or 0)}"
    free_host = available_memory_bytes(cpu)
    if free_host is None or est.host_bytes <= free_host:
        current = tile if tiled else max(h, w)
        for t in (512, 256, 128, 64):
            if t < current and fits(estimate_upscale(loaded, in_shape, request, t, overlap, tta)):
                msg += f"; tiles of {t} (--tile {t}) would fit"
                break
    raise ValueError(msg)


# --------------------------------------------------------------------------------------------
# test-time self-ensemble


@dataclass(frozen=True)
class Dihedral:
    """One of the 8 flips/transposes of an image, and how a request and an output follow it.

    The input ``(..., h, w)`` is flipped first (``flip_rows``: upside down, ``flip_cols``: left
    to right, both along the *original* axes), then transposed. The model's output for it is
    brought back by the inverse: transposed back, then flipped again.

    Attributes:
        transpose: swap rows and columns (the request's two scales and two sizes swap too).
        flip_rows: reverse the order of the rows (a vertical flip).
        flip_cols: reverse the order of the columns (a horizontal flip).
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., h, w)`` transformed: ``(..., h, w)``, or ``(..., w, h)`` transposed."""
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        if dims:
            x = x.flip(dims)
        return x.transpose(-2, -1) if self.transpose else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """An output ``(..., H', W')`` of a transformed input, brought back to the input's frame."""
        if self.transpose:
            y = y.transpose(-2, -1)
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        return y.flip(dims) if dims else y

    def request(self, scale: object, size: object) -> tuple[object, object]:
        """The request for the transformed input: ``(r_v, r_h)`` → ``(r_h, r_v)`` and
        ``(H, W)`` → ``(W, H)`` when transposed; unchanged otherwise (``None`` stays ``None``)."""
        if not self.transpose:
            return scale, size
        from .geometry import UpscaleRequest

        if scale is not None:
            scale = UpscaleRequest(scale=scale).transposed().scale
        if size is not None:
            size = UpscaleRequest(size=size).transposed().size
        return scale, size


#: The 8 transforms of the dihedral group of the square, in the order ``tta=n`` takes them:
#: identity, horizontal flip, vertical flip, both (= 180° rotation), then the transposes of
#: these four. ``tta=2`` is the identity and the horizontal flip, ``tta=4`` the four flips.
DIHEDRAL: tuple[Dihedral, ...] = tuple(
    Dihedral(transpose=t, flip_rows=v, flip_cols=c)
    for t in (False, True)
    for v, c in ((False, False), (False, True), (True, False), (True, True))
)

#: Transform counts ``tta=`` accepts (``True`` is 8, ``False`` is 1: no ensemble).
TTA_COUNTS = (1, 2, 4, 8)


def tta_count(tta: object) -> int:
    """``tta`` (a bool or one of :data:`TTA_COUNTS`) as a number of transforms.

    Raises:
        ValueError: anything else (``3``, ``"yes"``, ``2.0``, ``-1``).
    """
    if isinstance(tta, bool):
        return 8 if tta else 1
    if isinstance(tta, (int, np.integer)) and int(tta) in TTA_COUNTS:
        return int(tta)
    raise ValueError(
        f"tta must be True, False or a number of transforms in {TTA_COUNTS}, got {tta!r}"
    )


def _grid_exact_axes(h: int, w: int, scale: object, size: object) -> tuple[bool, bool]:
    """Whether a flip along rows / columns maps the output grid onto itself: ``h·r_v == H``.

    With ``size`` alone ``r_v = H/h``, so this always holds; with a scale ``H = floor(h·r_v)``
    and a flip moves the output grid by ``h·r_v − H`` output rows (see :func:`self_ensemble`).
    """
    from .geometry import EPS, UpscaleRequest, resolve_output_size

    if scale is None:
        return True, True
    if size is None:
        H, W, r_v, r_h = resolve_output_size(h, w, scale=scale)
    else:  # an evaluator's pair: the nominal scale, the exact size
        r_v, r_h = UpscaleRequest(scale=scale).scale
        H, W, _, _ = resolve_output_size(h, w, size=size)
    return abs(h * r_v - H) <= EPS, abs(w * r_h - W) <= EPS


def tta_transforms(
    tta: bool | int, h: int, w: int, scale: object = None, size: object = None
) -> list[Dihedral]:
    """The transforms ``tta=`` averages for an ``h × w`` input and this request.

    The first ``n`` of :data:`DIHEDRAL` (``n`` = 8 for ``True``), less those that flip an axis
    whose output grid a flip would move (``h·r_v`` not a whole number of rows, likewise
    columns; :func:`self_ensemble` explains why). Transposes never move the grid.

    Args:
        tta: ``True`` (8), ``False`` (1), or 1, 2, 4 or 8.
        h, w: input size.
        scale, size: the request (``scale``, ``size`` or both, as an evaluator gives both).

    Returns:
        At least the identity, in :data:`DIHEDRAL` order.

    Raises:
        ValueError: a bad ``tta`` or request.
    """
    n = tta_count(tta)
    if scale is None and size is None:
        raise ValueError("give scale=... or size=(H, W)")
    rows_ok, cols_ok = _grid_exact_axes(h, w, scale, size)
    return [
        t for t in DIHEDRAL[:n] if (rows_ok or not t.flip_rows) and (cols_ok or not t.flip_cols)
    ]


#: ``run(x (N, C, h, w), scale, size) -> (N, C', H, W)``: one model call for :func:`self_ensemble`.
ModelCall = Callable[[torch.Tensor, object, object], torch.Tensor]


def self_ensemble(
    run: ModelCall,
    x: torch.Tensor,
    scale: object = None,
    size: object = None,
    transforms: bool | int | Sequence[Dihedral] = 8,
) -> torch.Tensor:
    """Test-time self-ensemble: the mean of the model's outputs for flipped/transposed inputs.

    For each transform ``t``: ``t.invert(run(t.apply(x), *t.request(scale, size)))``; a
    transposed input gets the transposed request (scales ``(r_v, r_h)`` → ``(r_h, r_v)``,
    size ``(H, W)`` → ``(W, H)``), so every term has the shape of the plain output.

    **What is averaged.** Each term is an estimate of the same output pixels only if the
    transform maps the output grid onto itself. The model is trained on LR images made by
    bicubic with the nominal factor ``1/r`` (:func:`metasr.data.bicubic_pair`), so output row
    ``i`` (LR row ``floor(i/r)``, offset ``frac(i/r)``) stands for the LR position
    ``(i + 0.5)/r − 0.5`` (pixel centres). Flip the ``h`` LR rows, run, flip the ``H`` output
    rows back: row ``i`` then stands for ``(i + 0.5)/r − 0.5 + (h − H/r)``, i.e. the grid
    moves by ``h·r − H`` output rows. That is zero at integer scales and whenever ``h·r`` is a
    whole number (and always for a ``size=`` request, where ``r = H/h``), and up to one output
    row otherwise (e.g. 85 rows at ×3.5: 297 rows, shifted by half a row). Transposes move
    nothing. With an integer ``transforms`` only grid-exact transforms are averaged
    (:func:`tta_transforms`); an explicit sequence is averaged as given.

    **Why the mean.** The terms are estimates of the same pixels whose errors differ with the
    orientation; their mean is the estimate with the least squared error when those errors are
    alike and independent, which is what PSNR scores; a median of 8 (the mean of the middle two)
    would throw away most of them. A model equivariant under the transforms (bicubic, or a
    network reduced to its bicubic residual) gives back its plain output exactly.

    Args:
        run: one model call, ``run(x, scale, size)`` (e.g. :func:`metasr.tiling.upscale` of a
            model, so that each transform is tiled on its own).
        x: ``(N, C, h, w)``.
        scale, size: the request for ``x``, passed to ``run`` (one of them, or both).
        transforms: ``True``/``False``/1/2/4/8 (:func:`tta_transforms`), or the
            :class:`Dihedral` transforms to average.

    Returns:
        ``(N, C', H, W)``: the mean of the terms, on the device of the first term, float32
        (float64 when the terms are).

    Raises:
        ValueError: a bad ``transforms``, an empty sequence, or a term of another shape than
            the first (a ``run`` that does not follow the request).
    """
    if isinstance(transforms, (bool, int, np.integer)):
        ts = tta_transforms(transforms, x.shape[-2], x.shape[-1], scale, size)
    else:
        ts = list(transforms)
        if not ts or not all(isinstance(t, Dihedral) for t in ts):
            raise ValueError(
                f"transforms must be a number of transforms or Dihedral transforms, "
                f"got {transforms!r}"
            )
    acc: torch.Tensor | None = None
    for t in ts:
        s, z = t.request(scale, size)
        y = t.invert(run(t.apply(x), s, z))
        if acc is None:
            # float32 at least (float64 terms stay float64); a copy, never the model's buffer.
            acc = y.to(torch.promote_types(y.dtype, torch.float32), copy=True)
        elif y.shape != acc.shape:
            raise ValueError(
                f"self-ensemble: transform {t} gave {tuple(y.shape)} after inversion, the first "
                f"gave {tuple(acc.shape)}; run must honour the transformed request"
            )
        else:
            acc += y.to(acc.device, acc.dtype)
    assert acc is not None
    return acc.div_(len(ts))


#: Sample types an image raster can have (fields keep any numeric type).
_IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _check_chw(data: object, what: str) -> np.ndarray:
    """``data`` if it is a real-valued numeric ``(C, h, w)`` array with every side > 0."""
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (C, h, w), got {type(data).__name__}")
    if data.ndim != 3:
        raise ValueError(f"{what}: expected an array (C, h, w), got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold real numbers, got dtype {data.dtype}")
    if 0 in data.shape:
        raise ValueError(f"{what} is empty: shape {data.shape}")
    return data


def _check_raster(raster: object) -> None:
    """Refuse a raster whose parts do not agree (see :class:`metasr.io.Raster`)."""
    if not isinstance(raster, Raster):
        raise ValueError(f"expected a metasr.io.Raster, got {type(raster).__name__}")
    data = _check_chw(raster.data, "raster.data")
    if raster.kind not in ("image", "field"):
        raise ValueError(f"raster.kind must be 'image' or 'field', got {raster.kind!r}")
    if raster.kind == "image" and np.dtype(raster.dtype) not in _IMAGE_DTYPES:
        raise ValueError(
            f"an image raster has samples of type uint8 or uint16, got {raster.dtype}; "
            "floating-point samples are a field (kind='field')"
        )
    if raster.alpha is not None:
        alpha = raster.alpha
        if not isinstance(alpha, np.ndarray) or alpha.shape != data.shape[1:]:
            shape = alpha.shape if isinstance(alpha, np.ndarray) else type(alpha).__name__
            raise ValueError(
                f"raster.alpha must be an array (h, w) = {data.shape[1:]} like the data, "
                f"got {shape}"
            )


def upscale_array(
    loaded: LoadedModel,
    data: np.ndarray,
    request: UpscaleRequest,
    kind: Literal["image", "field"] = "image",
    tile: int = 0,
    overlap: int | None = DEFAULT_OVERLAP,
    progress: bool = False,
    tta: bool | int = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Upscale ``data`` ``(C, h, w)`` with a loaded model, as ``request`` asks
    (an :class:`~metasr.geometry.UpscaleRequest`: ``scale``, ``size`` or ``coords``).

    Channels: when ``C`` equals the model's input channels they go through together. Otherwise
    (a gray image or one-channel field on an RGB model, a multi-channel field, ...) each channel
    goes through on its own, replicated to the model's input channels, and the mean of the
    output channels is kept; the channels are stacked as one batch. For a gray image on an RGB
    model this is the natural inverse of gray → RGB (the mean of three equal channels is the
    gray value; luma weights also sum to one and would differ only where the model invents
    colour).

    Values: ``kind="image"`` data is in 0..1 and is multiplied by the model's ``value_range``
    on the way in and divided on the way out (not clamped here); ``kind="field"`` data is passed
    through as it is: a model for fields expects its own normalisation.

    Self-ensemble: ``tta=True`` (or 2, 4, 8 transforms) averages the outputs for the flipped
    and transposed input (:func:`self_ensemble`; grid-exact transforms only, see
    :func:`tta_transforms`), each run whole or tiled like the plain call; it costs one model
    call per transform and one more output-sized buffer.

    Precision: ``"fp32"``, ``"bf16"`` (CPU: bfloat16 autocast) or ``"auto"`` (bfloat16 where the
    CPU has it natively, and on the CPU the input in channels-last memory format for the
    networks measured faster so), :mod:`metasr.precision`.

    Returns:
        ``(C, H, W)`` float32.

    Raises:
        TypeError: ``request`` is not an :class:`~metasr.geometry.UpscaleRequest`.
        ValueError: ``data`` is not a numeric ``(C, h, w)`` array, ``kind`` is unknown, ``tta``
            is not a bool or 1, 2, 4 or 8 (or not 1 with ``coords``), the channels cannot be fed
            to the model, or ``precision`` is unknown (or ``"bf16"`` off the CPU).
    """
    _check_chw(data, "data")
    if kind not in ("image", "field"):
        raise ValueError(f"kind must be 'image' or 'field', got {kind!r}")
    transforms = _call_transforms(tta, request, *data.shape[1:])
    prec = plan_precision(precision, loaded.model, next(loaded.model.parameters()).device)
    return _upscale_array(loaded, data, request, kind, tile, overlap, progress, transforms, prec)


def _call_transforms(tta: object, request: object, h: int, w: int) -> list[Dihedral] | None:
    """The self-ensemble's transforms of a call on an ``h × w`` input (:func:`tta_transforms`;
    ``None``: a plain call), decided once at the call's door with the checks of its request.

    Raises:
        TypeError: ``request`` is not an :class:`~metasr.geometry.UpscaleRequest`.
        ValueError: a bad ``tta``, or ``tta`` with a ``coords`` request.
    """
    n_tta = tta_count(tta)
    if not isinstance(request, UpscaleRequest):
        raise ArgumentTypeError(
            f"request must be a metasr.UpscaleRequest, got {type(request).__name__}"
        )
    if n_tta == 1:
        return None
    if request.coords is not None:
        raise ValueError("tta flips and transposes the input; a coords request cannot follow")
    return tta_transforms(n_tta, h, w, request.scale, request.size)


def _upscale_array(
    loaded: LoadedModel,
    data: np.ndarray,
    request: UpscaleRequest,
    kind: str,
    tile: int,
    overlap: int | None,
    progress: bool,
    transforms: list[Dihedral] | None,
    prec: Precision,
) -> np.ndarray:
    """:func:`upscale_array` of a checked array and request, with the self-ensemble's
    transforms (:func:`_call_transforms`) and the precision
    (:func:`metasr.precision.plan_precision`) decided at the call's door."""
    model = loaded.model
    p = next(model.parameters())  # the device and dtype the model runs in
    C, h, w = data.shape
    cin, cout = loaded.in_channels, loaded.out_channels
    if C == cin:
        if cout != cin:
            raise ValueError(
                f"model {loaded.name} maps {cin} to {cout} channels; an image needs as many out"
            )
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
        per_channel = False
    elif cin in (1, 3):
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[:, None]
        x = x.expand(C, cin, h, w)
        per_channel = True
    else:
        raise ValueError(
            f"model {loaded.name} takes {cin} channels; the input has {C} "
            "(channels are run one by one only for 1- or 3-channel models)"
        )
    gain = loaded.value_range if kind == "image" else 1.0
    x = (x * gain).to(device=p.device, dtype=p.dtype)
    x = x.contiguous(memory_format=prec.memory_format)

    def run(xt: torch.Tensor, s: object, z: object) -> torch.Tensor:
        # One term of the self-ensemble: the request of its (possibly transposed) input.
        return upscale(model, xt, UpscaleRequest(scale=s, size=z), tile, overlap, progress)

    with torch.inference_mode(), prec.autocast():
        if transforms is None:
            y = upscale(model, x, request, tile, overlap, progress)
        else:
            y = self_ensemble(run, x, request.scale, request.size, transforms)
    y = y.float().cpu() / gain
    y = y.mean(dim=1) if per_channel else y[0]  # (C, H, W)
    return y.numpy()


def upscale_alpha(alpha: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Bicubic upsampling of an alpha plane ``(h, w)`` in 0..1 to ``out_shape``, clamped.

    Raises:
        ValueError: ``alpha`` is not a non-empty numeric 2-D array, or ``out_shape`` is not
            two positive integers.
    """
    if not isinstance(alpha, np.ndarray) or alpha.ndim != 2 or 0 in alpha.shape:
        shape = alpha.shape if isinstance(alpha, np.ndarray) else type(alpha).__name__
        raise ValueError(f"alpha must be a non-empty array (h, w), got {shape}")
    if alpha.dtype.kind not in "biuf":
        raise ValueError(f"alpha must hold real numbers, got dtype {alpha.dtype}")
    if (
        not isinstance(out_shape, (tuple, list))
        or len(out_shape) != 2
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in out_shape)
        or min(out_shape) < 1
    ):
        raise ValueError(f"out_shape must be two positive integers (H, W), got {out_shape!r}")
    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    out = F.interpolate(a, size=out_shape, mode="bicubic", align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def _field_stats(loaded: LoadedModel, raster: Raster, normalize: str):
    """The statistics a raster is normalised with (a field model's, for a field), or ``None``.

    Warns (one line) when the input does not suit the model: an image on a field model (its
    statistics are for physical values, not 0..1 codes), or a field whose values lie outside
    an image model's input range (``--normalize minmax`` maps them into it).
    """
    import warnings

    stats = loaded.stats
    lo, hi = float(raster.data.min()), float(raster.data.max())
    if stats is not None and raster.kind == "image":
        warnings.warn(
            f"model {loaded.name} is a field model (statistics of "
            f"{', '.join(stats.variables)} in {', '.join(u or '?' for u in stats.units)}); "
            f"this {np.dtype(raster.dtype).itemsize * 8}-bit image goes through it as 0..1 values",
            stacklevel=3,
        )
        return None
    if stats is None and raster.kind == "field" and normalize == "none":
        top = loaded.value_range
        if lo < -0.01 * top or hi > 1.01 * top:
            warnings.warn(
                f"model {loaded.name} takes values in 0..{top:g} but this field spans "
                f"{lo:.4g}..{hi:.4g} (give --normalize minmax, or a model with field statistics)",
                stacklevel=3,
            )
        return None
    if stats is not None and raster.kind == "field" and normalize == "minmax":
        raise ValueError(
            f"--normalize minmax is for image models; model {loaded.name} normalises fields "
            "with its own statistics"
        )
    return stats


def upscale_raster(
    loaded: LoadedModel,
    raster: Raster,
    request: UpscaleRequest,
    tile: int = 0,
    overlap: int | None = DEFAULT_OVERLAP,
    normalize: Literal["none", "minmax"] = "none",
    progress: bool = False,
    tta: bool | int = False,
    precision: str = "fp32",
) -> Raster:
    """Upscale a whole :class:`metasr.io.Raster` (colour through the model, alpha bicubic) as
    ``request`` asks (an :class:`~metasr.geometry.UpscaleRequest`).

    A field (``kind="field"``) on a model with normalisation statistics
    (:func:`metasr.checkpoints.checkpoint_stats`, ONNX files included) is normalised with them
    and de-normalised after (:meth:`~metasr.checkpoints.FieldStats.normalise`, the same code as
    netCDF input). An image on such a model, or a field outside an image model's value range,
    gets one warning.

    Args:
        normalize: for fields on a model without statistics, ``"minmax"`` maps each channel's
            range to 0..1 before the model and back after it (for models trained on images);
            ``"none"`` passes values as they are. Images are always in 0..1.
        tta: test-time self-ensemble, as in :func:`upscale_array`.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``, as in :func:`upscale_array`.

    Returns:
        A raster of the same kind and dtype, ``(C, H, W)``.

    Raises:
        ValueError: ``normalize`` or ``tta`` is bad, or the raster is inconsistent: ``data`` not a
            numeric ``(C, h, w)`` array, an image whose sample type is not uint8/uint16, or an
            ``alpha`` of another size than the data.
    """
    if normalize not in ("none", "minmax"):
        raise ValueError(f"normalize must be 'none' or 'minmax', got {normalize!r}")
    _check_raster(raster)
    transforms = _call_transforms(tta, request, *raster.data.shape[1:])
    prec = plan_precision(precision, loaded.model, next(loaded.model.parameters()).device)
    data = raster.data
    kind = raster.kind
    stats = _field_stats(loaded, raster, normalize)
    if stats is not None:
        # A field model: its stored statistics, as for netCDF input (FieldStats.normalise);
        # it runs in float32 whatever ``precision`` says (as it always has).
        y = _upscale_array(
            loaded, stats.normalise(data), request, "field", tile, overlap, progress, transforms,
            FLOAT32,
        )  # fmt: skip
        out = stats.denormalise(y)
    elif kind == "field" and normalize == "minmax":
        lo = data.min(axis=(1, 2), keepdims=True)
        span = data.max(axis=(1, 2), keepdims=True) - lo
        span = np.where(span > 0, span, 1.0)  # a constant channel stays constant
        y = _upscale_array(
            loaded, (data - lo) / span, request, "image", tile, overlap, progress, transforms, prec
        )
        out = y.astype(np.float64) * span + lo
    else:
        out = _upscale_array(loaded, data, request, kind, tile, overlap, progress, transforms, prec)
    alpha = None
    if raster.alpha is not None:
        alpha = upscale_alpha(raster.alpha, (out.shape[1], out.shape[2]))
    return raster.with_data(out, alpha)
