"""Export a network at a fixed request: ``torch.export`` programs and ONNX files.

Meta-Upscale's geometry depends only on the input size and the request (a scale or an output
size), so for a fixed input size and request it is a set of constants: under export the op
runs in plain standard ops with the index maps and positions baked in
(:mod:`metasr.ops.meta_upscale.static`: convolution, gather, matmul, reshape). The batch size
stays dynamic; the input's height and width and the request are fixed, one file per
``(input size, request)``.

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


def _example(
    net: nn.Module, input_size: tuple[int, int], scale: object, size: object, batch: int = 1
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A random input for ``net`` and the output size of the request (validated)."""
    h, w = (int(v) for v in input_size)
    H, W, _, _ = resolve_output_size(h, w, scale=scale, size=size)
    p = next(net.parameters())
    channels = getattr(net, "in_channels", None) or getattr(net, "in_chans", None)
    if channels is None:
        raise ValueError(f"cannot tell the input channels of {type(net).__name__}")
    gain = float(getattr(net, "input_range", 1.0))
    x = torch.rand(batch, channels, h, w, device=p.device, dtype=p.dtype) * gain
    return x, (H, W)


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
        ValueError: a bad request or input size.
    """
    net = net.eval()
    x, _ = _example(net, input_size, scale, size, batch=2)
    size = None if size is None else (int(size[0]), int(size[1]))
    return torch.export.export(
        _FixedRequest(net, scale, size).eval(),
        (x,),
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        strict=False,
    )


def format_request(scale: object, size: object) -> str:
    """``"scale 3.5x2"`` or ``"size 721x1440"``: how messages and metadata name a request."""
    if size is not None:
        return f"size {int(size[0])}x{int(size[1])}"
    r = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    return f"scale {float(r[0]):g}x{float(r[1]):g}"


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    scale: object = None,
    size: tuple[int, int] | None = None,
    value_range: float = 1.0,
    name: str = "",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``net`` at one input size and request as an ONNX file (float32, dynamic batch).

    Args:
        net: a metasr network, float32 on the CPU (it is put in eval mode).
        path: the ``.onnx`` file to write.
        input_size: ``(h, w)`` the file takes.
        scale, size: the request (exactly one).
        value_range: the network's input for an image in 0..1 (recorded for ``metasr upscale``).
        name: what the model was loaded as (recorded in the metadata).
        metadata: more entries for the file's metadata: a field model's
            :func:`metasr.checkpoints.stats_metadata`, so that ``metasr upscale --model
            file.onnx`` normalises as with the checkpoint (the graph takes normalised values,
            like the network).

    Returns:
        ``path``. Graph input ``"lr"`` ``(N, Cin, h, w)``, output ``"sr"`` ``(N, Cout, H, W)``.

    Raises:
        ValueError: a bad request, or ``onnx``/``onnxscript`` missing.
    """
    from .io import atomic_write

    for module in ("onnx", "onnxscript"):
        _need(module)
    path = Path(path)
    net = net.eval()
    x, (H, W) = _example(net, input_size, scale, size, batch=2)
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"export a float32 CPU model, got {x.dtype} on {x.device}")
    size = None if size is None else (int(size[0]), int(size[1]))
    # The graph and its metadata go to a temporary file renamed at the end (atomic_write): an
    # interrupted export neither truncates nor destroys a previous good file at ``path``.
    atomic_write(
        path,
        lambda tmp: _write_onnx(net, x, scale, size, (H, W), value_range, name, metadata, tmp),
    )
    return path


def _write_onnx(
    net: nn.Module,
    x: torch.Tensor,
    scale: object,
    size: tuple[int, int] | None,
    output_size: tuple[int, int],
    value_range: float,
    name: str,
    metadata: dict[str, str] | None,
    path: Path,
) -> None:
    """:func:`export_onnx`'s writing: the graph for example input ``x``, then the metadata."""
    import onnx

    H, W = output_size
    torch.onnx.export(
        _FixedRequest(net, scale, size).eval(),
        (x,),
        str(path),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        external_data=False,
        verbose=False,
    )
    proto = onnx.load(str(path))
    h, w = x.shape[-2:]
    meta = {
        "metasr.request": format_request(scale, size),
        "metasr.input_size": f"{h}x{w}",
        "metasr.output_size": f"{H}x{W}",
        "metasr.in_channels": str(x.shape[1]),
        "metasr.value_range": repr(float(value_range)),
        "metasr.name": name or type(net).__name__,
    }
    meta.update(metadata or {})
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
    text: str, in_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[float, float]:
    """The per-axis ratios of ``"scale AxB"`` or ``"size HxW"`` (which must be ``out_size``)."""
    kind, _, value = text.partition(" ")
    if kind == "scale":
        ratios = _pair(value)
        if not all(math.isfinite(r) and r >= 1 for r in ratios):
            raise ValueError(text)
        return ratios
    if kind == "size" and _size(value) == out_size:
        return out_size[0] / in_size[0], out_size[1] / in_size[1]
    raise ValueError(text)


class OnnxModel(nn.Module):
    """An exported ONNX file run by onnxruntime, with a metasr network's call signature.

    ``forward(x, scale=None, size=None)`` accepts only the request and input size the file was
    exported for (any batch), so :func:`metasr.inference.upscale_array` and
    :func:`metasr.tiling.upscale` (whole inputs; tiles need a metasr network) run it unchanged.

    Attributes:
        path: the file.  input_size, output_size: ``(h, w)``, ``(H, W)`` it maps.
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
        h, w = _entry(meta, "metasr.input_size", _size)
        H, W = _entry(meta, "metasr.output_size", _size)
        self.input_size, self.output_size = (h, w), (H, W)
        self.in_channels = _entry(meta, "metasr.in_channels", lambda t: _positive(int(t)))
        self.out_channels = int(shape[1])
        self.value_range = _entry(meta, "metasr.value_range", lambda t: _positive(float(t)))
        self.request = meta["metasr.request"]
        self._r = _entry(meta, "metasr.request", lambda t: _request_ratios(t, (h, w), (H, W)))

    def forward(
        self, x: torch.Tensor, scale: object = None, size: object = None, region: object = None
    ) -> torch.Tensor:
        """Run the session on ``x (N, Cin, h, w)`` → ``(N, Cout, H, W)`` on ``x``'s device/dtype.

        Raises:
            ValueError: for a region, another input size, or another request.
        """
        if region is not None:
            raise ValueError("an exported ONNX model runs whole inputs only, not regions")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.path.name} takes (N, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        H, W, r_v, r_h = resolve_output_size(h, w, scale=scale, size=size)
        same = (h, w) == self.input_size and (H, W) == self.output_size
        same = same and all(
            math.isclose(a, b, rel_tol=1e-9) for a, b in zip((r_v, r_h), self._r, strict=True)
        )
        if not same:
            asked = format_request(scale, size)
            raise ValueError(
                f"{self.path.name} was exported for a {self.input_size[0]}x{self.input_size[1]} "
                f"input and {self.request} (-> {self.output_size[0]}x{self.output_size[1]}); "
                f"this call asks for a {h}x{w} input and {asked} (-> {H}x{W}): export again "
                "with `metasr export` for that request"
            )
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
        return f"path={str(self.path)!r}, input_size={self.input_size}, request={self.request!r}"
