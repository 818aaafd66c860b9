"""Export a network at a fixed request: ``torch.export`` programs and ONNX files.

Meta-Upscale's geometry depends only on the input size and the request (a scale or an output
size), so for a fixed input size and request it is a set of constants: under export the op
runs in plain standard ops with the index maps and positions baked in
(:mod:`metasr.ops.meta_upscale.static`: convolution, gather, matmul, reshape). The batch size
stays dynamic; the input's height and width and the request are fixed, one file per
``(input size, request)``.

**Dynamic input size** (``input_size=None``): at a fixed scale ``p/q`` per axis with a small
denominator (integer scales, 2.5, 3.5x2, 2.3, 4/3 to full precision) the geometry repeats every
``q`` LR pixels, and the head becomes one strided convolution, a depth-to-space and a crop that
take any height and width (:mod:`metasr.ops.meta_upscale.rational`); the bicubic residual takes
the same form (:func:`metasr.archs.bicubic.bicubic_period_kernel`). Convolutional networks
(MetaEDSR, MetaRDN, periodic in longitude or not) export so; MetaSwinIR, a request by output
size, the official float32 arithmetic and other scales are refused with one line.

ONNX files use the ``torch.onnx`` dynamo exporter (needs ``onnx`` and ``onnxscript``) at opset
:data:`ONNX_OPSET` and carry the request in their metadata (``metasr.*`` keys), which
:class:`OnnxModel` (onnxruntime) reads back to refuse any other request. Install with
``pip install metasr[export]``; ``import metasr`` does not need these packages.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .geometry import resolve_output_size

__all__ = [
    "ONNX_OPSET",
    "OnnxModel",
    "export_onnx",
    "export_program",
    "format_request",
]

#: The ``metasr.input_size`` metadata of a file that takes any height and width.
DYNAMIC = "dynamic"

#: Why a ``torch.export`` program has a fixed input size. The ONNX graph of the period form
#: (:class:`_DynamicScale`) takes any size (tests/test_export_dynamic.py runs it from 1x1 up);
#: ``torch.export`` guards the strided convolution's output size (``!= 1``) and the crop
#: (``!=`` whole periods), so a program would refuse some sizes.
PROGRAM_FIXED_SIZE = (
    "a torch.export (.pt2) program takes a fixed input size (torch.export guards the strided "
    "convolution's and the crop's sizes)"
)

#: Largest head period kernel of a dynamic-size export, in values (128 MiB in float32).
MAX_PERIOD_VALUES = 1 << 25

#: ONNX opset of exported files (ONNX 1.13+; onnxruntime 1.14+ runs it).
ONNX_OPSET = 18

#: Tensor names of exported graphs.
INPUT_NAME, OUTPUT_NAME = "lr", "sr"


def _need(module: str) -> None:
    from ._extras import require

    require(module, "export", "ONNX export and inference")


class _FixedRequest(nn.Module):
    """``net`` with its request fixed, so the exported graph has one input ``x``."""

    def __init__(self, net: nn.Module, scale: object, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.net = net
        self.scale = scale
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, scale=self.scale, size=self.size)


class _DynamicScale(nn.Module):
    """``net`` at a fixed rational scale for any input size, in the period form.

    The network's own forward plans its geometry from the input's size in Python, which a
    graph with a symbolic size cannot do; this one composes the same parts: ``sub_mean``, the
    backbone, the head as a period convolution (:mod:`metasr.ops.meta_upscale.rational`), the
    bicubic residual in the mean-shifted domain (also a period convolution), ``add_mean``, as
    :meth:`metasr.archs.base.MeanShiftMetaSRNet.forward` does.

    Raises:
        ValueError: a network other than a :class:`~metasr.archs.base.MeanShiftMetaSRNet`
            (MetaSwinIR: its window padding and attention mask follow the input size), or a
            scale or head without a period form.
    """

    def __init__(self, net: nn.Module, scale: object) -> None:
        super().__init__()
        from .archs.base import MeanShiftMetaSRNet
        from .archs.bicubic import bicubic_period_kernel
        from .geometry import parse_scale
        from .ops.meta_upscale.rational import head_period_weight, rational_scale

        name = type(net).__name__
        if not isinstance(net, MeanShiftMetaSRNet):
            why = (
                "its window attention pads the input to whole windows and builds its "
                "shifted-window mask from the input size"
                if hasattr(net, "effective_window_size")
                else "only the convolutional Meta-SR networks (MetaEDSR, MetaRDN) have one"
            )
            raise ValueError(
                f"{name} cannot be exported with a dynamic input size ({why}); give a fixed "
                "input size (HxW)"
            )
        self.net = net
        self.scale = parse_scale(scale)
        self.period = rational_scale(self.scale)
        up = net.upsample
        (p_v, q_v), (p_h, q_h) = self.period
        k, C, O = up.phi.kernel_size, up.phi.in_channels, up.phi.out_channels
        values = p_v * p_h * O * C * (q_v + k - 1) * (q_h + k - 1)
        if values > MAX_PERIOD_VALUES:
            raise ValueError(
                f"scale {self.scale[0]:g}x{self.scale[1]:g} = {p_v}/{q_v} x {p_h}/{q_h} needs a "
                f"head kernel of {values:,} values in the dynamic-size form (at most "
                f"{MAX_PERIOD_VALUES:,}); give a fixed input size (HxW)"
            )
        self.halo = k // 2
        self.periodic_lon = bool(net.periodic_lon)
        self.register_buffer(
            "head_weight", head_period_weight(up.phi, self.scale, up.arithmetic, self.periodic_lon)
        )
        self.bicubic = bool(net.bicubic_residual)
        if self.bicubic:
            kernel = bicubic_period_kernel(self.period, net.in_channels)
            self.register_buffer("bicubic_weight", kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .ops.meta_upscale.rational import period_conv

        x = self.net.sub_mean(x)
        f = self.net.forward_features(x)
        y = period_conv(f, self.head_weight, self.period, self.halo, periodic=self.periodic_lon)
        if self.bicubic:
            up = period_conv(x, self.bicubic_weight, self.period, 2, "replicate", self.periodic_lon)
            y = y + up
        return self.net.add_mean(y)


#: Example input size a dynamic-size export is traced at (any size > 1 would do).
DYNAMIC_EXAMPLE = (11, 13)


def _example(
    net: nn.Module,
    input_size: tuple[int, int] | None,
    scale: object,
    size: object,
    batch: int = 1,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A random input for ``net`` and the output size of the request (validated); for
    ``input_size=None`` (dynamic) one of :data:`DYNAMIC_EXAMPLE`."""
    h, w = (int(v) for v in (DYNAMIC_EXAMPLE if input_size is None else input_size))
    H, W, _, _ = resolve_output_size(h, w, scale=scale, size=size)
    p = next(net.parameters())
    channels = getattr(net, "in_channels", None) or getattr(net, "in_chans", None)
    if channels is None:
        raise ValueError(f"cannot tell the input channels of {type(net).__name__}")
    gain = float(getattr(net, "input_range", 1.0))
    x = torch.rand(batch, channels, h, w, device=p.device, dtype=p.dtype) * gain
    return x, (H, W)


def _traceable(
    net: nn.Module, input_size: tuple[int, int] | None, scale: object, size: object
) -> tuple[nn.Module, dict]:
    """The module to trace for a request and its ``dynamic_shapes``: the network with its
    request fixed and a dynamic batch, or for ``input_size=None`` its period form
    (:class:`_DynamicScale`) with a dynamic batch, height and width.

    Raises:
        ValueError: a dynamic size with a request by size, or a network or scale without a
            period form (one line saying why).
    """
    Dim = torch.export.Dim
    if input_size is not None:
        fixed = None if size is None else (int(size[0]), int(size[1]))
        return _FixedRequest(net, scale, fixed).eval(), {"x": {0: Dim("batch")}}
    if size is not None or scale is None:
        raise ValueError(
            "a dynamic input size needs a scale: a request by output size has a different "
            "scale for every input size; give a fixed input size (HxW) with a size"
        )
    dims = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    return _DynamicScale(net, scale).eval(), {"x": dims}


def export_program(
    net: nn.Module,
    input_size: tuple[int, int],
    scale: object = None,
    size: tuple[int, int] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` a network at one input size and request (dynamic batch).

    Args:
        net: a metasr network (``forward(x, scale=None, size=None)``); put in eval mode.
        input_size: ``(h, w)`` of the input the program takes.
        scale, size: the request (exactly one), as the network's ``forward``.

    Returns:
        An :class:`torch.export.ExportedProgram` of ``x (N, Cin, h, w) → (N, Cout, H, W)``, made
        of standard ATen ops (no metasr op: it runs without metasr installed).

    Raises:
        ValueError: a bad request or input size, or ``input_size=None``: a dynamic input size
            is for ONNX files only (:data:`PROGRAM_FIXED_SIZE`).
    """
    if input_size is None:
        raise ValueError(f"{PROGRAM_FIXED_SIZE}; give an input size, or export ONNX (export_onnx)")
    net = net.eval()
    x, _ = _example(net, input_size, scale, size, batch=2)
    module, dynamic_shapes = _traceable(net, input_size, scale, size)
    return torch.export.export(module, (x,), dynamic_shapes=dynamic_shapes, strict=False)


def _number(v: float) -> str:
    """``v`` as the shortest text that reads back as the same float (``2``, ``3.5``,
    ``1.3333333333333333``)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def format_request(scale: object, size: object) -> str:
    """``"scale 3.5x2"`` or ``"size 721x1440"``: how messages and metadata name a request
    (the factors to full precision, so that the metadata reads back exactly)."""
    if size is not None:
        return f"size {int(size[0])}x{int(size[1])}"
    r = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    return f"scale {_number(r[0])}x{_number(r[1])}"


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int] | None,
    scale: object = None,
    size: tuple[int, int] | None = None,
    value_range: float = 1.0,
    name: str = "",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``net`` at one request as an ONNX file (float32, dynamic batch), for one input
    size or any.

    Args:
        net: a metasr network, float32 on the CPU (it is put in eval mode).
        path: the ``.onnx`` file to write.
        input_size: ``(h, w)`` the file takes, or ``None``: any height and width, at a scale
            with a period form (module docstring; the file's ``metasr.input_size`` is then
            ``"dynamic"``).
        scale, size: the request (exactly one; a scale for ``input_size=None``).
        value_range: the network's input for an image in 0..1 (recorded for ``metasr upscale``).
        name: what the model was loaded as (recorded in the metadata).
        metadata: more entries for the file's metadata: a field model's
            :func:`metasr.checkpoints.stats_metadata`, so that ``metasr upscale --model
            file.onnx`` normalises as with the checkpoint (the graph takes normalised values,
            like the network).

    Returns:
        ``path``. Graph input ``"lr"`` ``(N, Cin, h, w)``, output ``"sr"`` ``(N, Cout, H, W)``
        (for a dynamic size, ``H = floor(h·r_v + 1e-6)``, ``W`` likewise, as
        :func:`metasr.geometry.resolve_output_size`).

    Raises:
        ValueError: a bad request, ``onnx``/``onnxscript`` missing, or (``input_size=None``) a
            network or request without a dynamic-size form.
    """
    from .io import atomic_write

    for module in ("onnx", "onnxscript"):
        _need(module)
    path = Path(path)
    net = net.eval()
    x, (H, W) = _example(net, input_size, scale, size, batch=2)
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"export a float32 CPU model, got {x.dtype} on {x.device}")
    module, dynamic_shapes = _traceable(net, input_size, scale, size)
    meta = {
        "metasr.request": format_request(scale, size),
        "metasr.input_size": DYNAMIC if input_size is None else "{}x{}".format(*x.shape[-2:]),
        "metasr.output_size": DYNAMIC if input_size is None else f"{H}x{W}",
        "metasr.in_channels": str(x.shape[1]),
        "metasr.value_range": repr(float(value_range)),
        "metasr.name": name or type(net).__name__,
    }
    meta.update(metadata or {})
    # The graph and its metadata go to a temporary file renamed at the end (atomic_write): an
    # interrupted export neither truncates nor destroys a previous good file at ``path``.
    atomic_write(path, lambda tmp: _write_onnx(module, x, dynamic_shapes, meta, tmp))
    return path


def _write_onnx(
    module: nn.Module, x: torch.Tensor, dynamic_shapes: dict, meta: dict[str, str], path: Path
) -> None:
    """:func:`export_onnx`'s writing: the graph of ``module`` for example input ``x``, then the
    metadata."""
    import onnx

    torch.onnx.export(
        module,
        (x,),
        str(path),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        verbose=False,
    )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _pair(text: str) -> tuple[float, float]:
    a, b = text.split("x")
    return float(a), float(b)


def _entry(meta: dict[str, str], key: str, parse):
    """``parse(meta[key])``; any failure as ``ValueError("KEY 'VALUE'")`` (ONNX metadata)."""
    text = meta[key]
    try:
        return parse(text)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{key} {text!r}") from None


def _positive(value):
    """``value`` if it is finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(value)
    return value


def _size(text: str) -> tuple[int, int]:
    """``"HxW"`` of positive integers within the output side cap."""
    from .geometry import MAX_OUTPUT_SIDE

    a, b = text.split("x")
    h, w = int(a), int(b)
    if not (1 <= h <= MAX_OUTPUT_SIDE and 1 <= w <= MAX_OUTPUT_SIDE):
        raise ValueError(text)
    return h, w


def _request_ratios(
    text: str, in_size: tuple[int, int] | None, out_size: tuple[int, int] | None
) -> tuple[float, float]:
    """The per-axis ratios of ``"scale AxB"`` or ``"size HxW"`` (which must be ``out_size``;
    ``None``: a dynamic-size file, whose request is a scale)."""
    kind, _, value = text.partition(" ")
    if kind == "scale":
        ratios = _pair(value)
        if not all(math.isfinite(r) and r >= 1 for r in ratios):
            raise ValueError(text)
        return ratios
    if kind == "size" and out_size is not None and _size(value) == out_size:
        return out_size[0] / in_size[0], out_size[1] / in_size[1]
    raise ValueError(text)


class OnnxModel(nn.Module):
    """An exported ONNX file run by onnxruntime, with a metasr network's call signature.

    ``forward(x, scale=None, size=None)`` accepts only the request and input size the file was
    exported for (any batch; any height and width for a file exported with a dynamic size), so
    :func:`metasr.inference.upscale_array` and :func:`metasr.tiling.upscale` (whole inputs;
    tiles need a metasr network) run it unchanged.

    Attributes:
        path: the file.  input_size, output_size: ``(h, w)``, ``(H, W)`` it maps (``None``
        for a file that takes any size: :attr:`dynamic`).
        request: ``"scale 3.5x2"`` or ``"size 721x1440"``.
        in_channels, out_channels: channels it takes and gives.  value_range: as recorded.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        _need("onnxruntime")
        import onnxruntime

        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise ValueError(f"{self.path}: not a runnable ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if "metasr.request" not in meta:
            raise ValueError(f"{self.path}: an ONNX file not written by `metasr export`")
        try:
            self._read_metadata(meta)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
            detail = f"no {exc.args[0]} entry" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{self.path}: not a usable `metasr export` file ({detail})") from None
        #: every metadata entry of the file (``field_stats`` of a field model among them)
        self.metadata = dict(meta)
        # inference.upscale_array reads the device and dtype of the first parameter: float32
        # on the CPU is what the session takes (an empty tensor, no weights live here).
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def _read_metadata(self, meta: dict[str, str]) -> None:
        """Sizes, channels, value range and request from the metadata and graph, checked
        against each other (a file edited by hand or written by another tool says so)."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ValueError(
                f"graph input {[i.name for i in inputs]} and output {[o.name for o in outputs]};"
                f" expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
            )
        shape = outputs[0].shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] < 1:
            raise ValueError(f"output {OUTPUT_NAME!r} has shape {shape}, not (N, C, H, W)")
        self.request = meta["metasr.request"]
        if meta["metasr.input_size"] == DYNAMIC:
            # Any input size at one scale: the output size follows from the input's.
            if meta["metasr.output_size"] != DYNAMIC or not self.request.startswith("scale "):
                raise ValueError(
                    f"a dynamic input size with output size {meta['metasr.output_size']!r} "
                    f"and {self.request!r} (expected 'dynamic' and a scale)"
                )
            self.input_size = self.output_size = None
            self._r = _entry(meta, "metasr.request", lambda t: _request_ratios(t, None, None))
        else:
            h, w = _entry(meta, "metasr.input_size", _size)
            H, W = _entry(meta, "metasr.output_size", _size)
            self.input_size, self.output_size = (h, w), (H, W)
            self._r = _entry(meta, "metasr.request", lambda t: _request_ratios(t, (h, w), (H, W)))
        self.in_channels = _entry(meta, "metasr.in_channels", lambda t: _positive(int(t)))
        self.out_channels = int(shape[1])
        self.value_range = _entry(meta, "metasr.value_range", lambda t: _positive(float(t)))

    @property
    def dynamic(self) -> bool:
        """The file takes any input height and width (at its one scale)."""
        return self.input_size is None

    def _refusal(self, h: int, w: int, H: int, W: int, scale: object, size: object) -> str:
        """The one line that refuses a call the file was not exported for."""
        asked = f"a {h}x{w} input and {format_request(scale, size)} (-> {H}x{W})"
        if self.dynamic:
            H0, W0, _, _ = resolve_output_size(h, w, scale=self._r)
            return (
                f"{self.path.name} was exported for any input size at {self.request} (a {h}x{w} "
                f"input -> {H0}x{W0}); this call asks for {asked}: export again with "
                "`metasr export` for that request"
            )
        return (
            f"{self.path.name} was exported for a {self.input_size[0]}x{self.input_size[1]} "
            f"input and {self.request} (-> {self.output_size[0]}x{self.output_size[1]}); "
            f"this call asks for {asked}: export again with `metasr export` for that request"
        )

    def forward(
        self, x: torch.Tensor, scale: object = None, size: object = None, region: object = None
    ) -> torch.Tensor:
        """Run the session on ``x (N, Cin, h, w)`` → ``(N, Cout, H, W)`` on ``x``'s device/dtype.

        Raises:
            ValueError: for a region, another input size (a fixed-size file), or another
                request.
        """
        if region is not None:
            raise ValueError("an exported ONNX model runs whole inputs only, not regions")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.path.name} takes (N, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        H, W, r_v, r_h = resolve_output_size(h, w, scale=scale, size=size)
        if self.dynamic:
            same = (H, W) == resolve_output_size(h, w, scale=self._r)[:2]
        else:
            same = (h, w) == self.input_size and (H, W) == self.output_size
        same = same and all(
            math.isclose(a, b, rel_tol=1e-9) for a, b in zip((r_v, r_h), self._r, strict=True)
        )
        if not same:
            raise ValueError(self._refusal(h, w, H, W, scale, size))
        lr = x.detach().to("cpu", torch.float32).numpy()
        try:
            (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(lr)})
        except Exception as exc:  # onnxruntime's own types: allocation failure, bad graph...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{self.path.name}: onnxruntime failed: {first}") from None
        expected = (int(x.shape[0]), self.out_channels, H, W)
        if tuple(y.shape) != expected:
            # A file whose metadata promise more than its graph gives must not be written
            # at the wrong size without a word.
            raise ValueError(
                f"{self.path.name} returned {tuple(y.shape)}, not the {expected} its metadata "
                f"promise for {self.request}"
            )
        return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        size = DYNAMIC if self.dynamic else self.input_size
        return f"path={str(self.path)!r}, input_size={size}, request={self.request!r}"
