"""Model checkpoints: every format metasr reads, recognised by content, and one loader.

:func:`load_model` accepts

* ``"default"``: the bundled photo model (``metasr/weights/default.safetensors``), and the
  other bundled models of :data:`metasr.weights.BUNDLED` by name (``"default-v1"``: the first
  default model; ``"t2m"``: near-surface temperature in kelvin on lat/lon grids, with its
  normalisation statistics);
* a **metasr checkpoint** (safetensors): the state dict plus, in the file's metadata, the
  registry name and constructor arguments of the architecture (written by
  :func:`save_checkpoint`), so the file alone rebuilds the model;
* a **BasicSR checkpoint** (``net_g_*.pth``, ``{"params": ..., "params_ema": ...}``): the
  network is rebuilt from the ``network_g`` options that :class:`MetaSRModel` stores in the file
  under ``"metasr_network"`` (:data:`NETWORK_KEY`), or from options given by the caller (the
  training option file's ``network_g``); ``params_ema`` is used when present;
* the **official Meta-SR checkpoint** (``model_1000.pt``, a raw ``state_dict`` of their MetaRDN,
  possibly wrapped or ``module.``-prefixed), recognised by its keys and loaded with
  :func:`metasr.archs.load_official_metardn`;
* a **registry name** (:func:`metasr.list_models`): the architecture with random weights, which
  is useful for trying shapes and speed, not for real images (a warning says so).

The format of a file is read from its content, never from its suffix: a safetensors header or a
PyTorch archive/pickle, then the entries of the PyTorch object. So an official checkpoint
renamed to ``.pth`` still loads as the official model, and a BasicSR file named ``.pt`` as
BasicSR. Anything else (an arbitrary pickle, an unrelated file, the state dict of an
architecture that the file does not describe) is refused with one ``ValueError`` that names the
file and says what it is.

Wrappers and ``module.`` prefixes are removed in one place for every format:
:func:`metasr._state_dict.clean_state_dict`.

A file is data from anywhere, so nothing in it is trusted: metadata must have the documented
types, the network it describes is measured on the ``meta`` device and refused above the size
caps of :func:`metasr.create_model` before any memory is allocated, weights that do not fit
are described in one line (counts and a few names), and weights holding NaN or infinity are
refused.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ._state_dict import clean_state_dict, describe_mismatch, is_state_dict, non_finite_tensors
from .field_stats import STATS_KEY, FieldStats, stats_from_metadata
from .modules import fold_head_options
from .validation import ArgumentTypeError
from .weights import BUNDLED

__all__ = [
    "ARCH_NAMES",
    "BUNDLED_MODELS",
    "CHECKPOINT_FORMAT",
    "NETWORK_KEY",
    "LoadedModel",
    "build_network",
    "checkpoint_stats",
    "load_basicsr_checkpoint",
    "load_checkpoint",
    "load_model",
    "network_value_range",
    "resolve_device",
    "save_checkpoint",
    "set_backend",
]

#: Value of the ``format`` metadata entry of a metasr checkpoint.
CHECKPOINT_FORMAT = "metasr-model"
_FORMAT_VERSION = "1"

#: The metasr networks that BasicSR option files can name (``network_g.type``).
ARCH_NAMES = ("MetaRDN", "MetaEDSR", "MetaSwinIR")

#: Names of the models shipped in ``metasr/weights`` (:data:`metasr.weights.BUNDLED`), for
#: ``--model``.
BUNDLED_MODELS = tuple(BUNDLED)

#: BasicSR checkpoint entry (written by ``MetaSRModel``) holding the ``network_g`` options.
NETWORK_KEY = "metasr_network"

#: Keys that only the official Meta-SR RDN state dict has together (its head's predictor named
#: ``P2W`` as published, or ``upsample.phi`` as metasr's MetaRDN names it).
_OFFICIAL_KEYS = ("SFENet1.weight", ("P2W.meta_block.0.weight", "upsample.phi.meta_block.0.weight"))

#: How :func:`load_model` obtained the model.
ModelFormat = Literal["metasr", "basicsr", "official", "registry", "onnx"]


@dataclass
class LoadedModel:
    """A model ready for inference and what is needed to feed it.

    Attributes:
        model: the network, in eval mode,
            ``forward(x, scale=None, size=None, region=None, coords=None)``.
        name: what was asked for (``"default"``, a path or a registry name).
        arch: registry name of the architecture (``"official"`` for the Meta-SR checkpoint).
        kwargs: constructor arguments.
        in_channels, out_channels: channels the network takes and gives.
        value_range: the network's input for an image in 0..1 is ``value · value_range``
            (:func:`network_value_range`: 255 for the paper networks, which take 0..255).
        metadata: the checkpoint's metadata (metasr files), or where the weights came from
            (BasicSR: ``param_key``, ``basicsr_type``); empty for registry models.
        format: ``"metasr"``, ``"basicsr"``, ``"official"`` or ``"registry"``.
        stats: the field statistics recorded in ``metadata`` (:func:`checkpoint_stats`), read
            once when the record is made; ``None`` without an entry.

    Raises:
        ValueError: ``metadata`` holds corrupt statistics, or statistics of another number of
            variables than ``in_channels``.
    """

    model: nn.Module
    name: str
    arch: str
    kwargs: dict = field(default_factory=dict)
    in_channels: int = 3
    out_channels: int = 3
    value_range: float = 1.0
    metadata: dict[str, str] = field(default_factory=dict)
    format: ModelFormat = "metasr"
    stats: FieldStats | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stats = stats_from_metadata(self.metadata, self.name, self.in_channels)


# --------------------------------------------------------------------------------------------
# networks


def build_network(opt: Mapping[str, Any]) -> nn.Module:
    """The metasr network described by BasicSR-style options (``type`` plus arguments).

    ``type`` is one of :data:`ARCH_NAMES` (a class name, as in BasicSR option files) or any
    name of :func:`metasr.list_models`.

    The network is measured on the ``meta`` device first and refused above the caps of
    :func:`metasr.create_model` (:func:`metasr.archs._registry.build_bounded`).

    Raises:
        TypeError: ``opt`` is not a mapping.
        ValueError: no or an unknown ``type``, arguments the constructor refuses (wrong names,
            values or types), or a network too large to build.
    """
    if not isinstance(opt, Mapping):
        raise ArgumentTypeError(f"network options must be a mapping, got {type(opt).__name__}")
    kwargs = dict(opt)
    name = kwargs.pop("type", None)
    if not isinstance(name, str):
        raise ValueError(f"network options need a 'type' (one of {', '.join(ARCH_NAMES)})")
    bad = [k for k in kwargs if not isinstance(k, str)]
    if bad:
        raise ValueError(f"network options: argument names must be strings, got {bad[:3]}")
    from . import archs
    from .archs._registry import build_bounded

    cls = getattr(archs, name, None) if name in ARCH_NAMES else None
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        kwargs = fold_head_options(kwargs)  # BasicSR files spell the head's options flat
        return build_bounded(lambda: cls(**kwargs), name)
    if name in archs.list_models():
        return archs.create_model(name, **kwargs)
    raise ValueError(
        f"unknown network type {name!r}; metasr provides {', '.join(ARCH_NAMES)} "
        f"and {', '.join(archs.list_models())}"
    )


def _registry_name(type_name: str) -> str:
    """Registry name for a BasicSR ``type`` (a class name such as ``MetaEDSR``).

    Of the entries built by that class, the one without preset arguments is preferred, so that
    the option file's arguments are exactly its kwargs. Unknown names are returned unchanged.
    """
    from . import archs
    from .archs._registry import model_entry

    names = archs.list_models()
    if type_name.lower() in names:
        return type_name.lower()
    matches = [n for n in names if model_entry(n).constructor.__name__ == type_name]
    matches.sort(key=lambda n: len(model_entry(n).defaults))
    return matches[0] if matches else type_name


def network_value_range(net: nn.Module) -> float:
    """What an image in 0..1 is multiplied by before ``net`` (and the output divided by).

    The network's ``input_range`` (``img_range`` for MetaRDN/MetaEDSR, which take
    ``[0, img_range]``; 1 for MetaSwinIR). Networks that are not metasr's are taken to work in
    0..1.
    """
    return float(getattr(net, "input_range", 1.0))


def set_backend(model: nn.Module, backend: str | None) -> None:
    """Use Meta-Upscale ``backend`` in every head of ``model``.

    The networks keep the backend on themselves (MetaRDN, MetaEDSR) or on their
    :class:`~metasr.MetaUpsample` head (MetaSwinIR, exposed as a property); every module with a
    ``backend`` attribute is set, so no head is missed whichever way a model stores it.
    The name is checked (and normalised: any case, ``None`` for ``"auto"``) by the op's own
    :func:`~metasr.ops.meta_upscale.dispatch.check_backend_name`.

    Raises:
        TypeError: ``backend`` is neither a string nor ``None``.
        ValueError: ``backend`` is neither ``"auto"`` nor a known backend name.
    """
    from .ops.meta_upscale.dispatch import check_backend_name

    _use_backend(model, check_backend_name(backend))


def _use_backend(model: nn.Module, backend: str) -> None:
    """:func:`set_backend` with a name already checked
    (:func:`metasr.ops.meta_upscale.dispatch.check_backend_name`)."""
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has.

    Raises:
        ValueError: not a device name (``"tpu"``), or a CUDA/MPS device that is not available
            (no GPU, or an index past the last one).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N, or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device is available (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"device {device!r}: metasr runs on cpu, cuda or mps")
    return dev


def _check_finite(model: nn.Module, name: str) -> None:
    """Refuse weights with NaN or infinity: every output would be NaN (a black image)."""
    bad = non_finite_tensors(model.state_dict())
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ValueError(
            f"checkpoint {name} has non-finite weights (NaN or infinity) in {len(bad)} "
            f"tensor(s), e.g. {shown}"
        )


def _finish(
    model: nn.Module,
    name: str,
    arch: str,
    kwargs: dict,
    metadata: dict,
    fmt: ModelFormat,
) -> LoadedModel:
    _check_finite(model, name)
    model.eval()
    return LoadedModel(
        model,
        name,
        arch,
        kwargs,
        model.in_channels,
        model.out_channels,
        network_value_range(model),
        metadata,
        fmt,
    )


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    from .archs.base import upgrade_state_dict

    state = upgrade_state_dict(state)  # official P2W.* names: the head's, as the model's hook
    # Compared first, so that the weights of another architecture (hundreds of names) give
    # one line with counts and a few names, not PyTorch's list of every key.
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise ValueError(
            f"{path}: the weights do not fit {type(model).__name__} (another architecture or "
            f"other arguments?): {mismatch}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise ValueError(
            f"{path}: the weights do not load into {type(model).__name__}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc


# --------------------------------------------------------------------------------------------
# metasr safetensors files


def _require_safetensors():
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ValueError(
            "metasr checkpoints are safetensors files: pip install safetensors"
        ) from None


#: Network options that leave the state dict's names and shapes unchanged but change what the
#: network computes; :func:`save_checkpoint` checks that ``kwargs`` rebuild them.
_BEHAVIOUR_OPTIONS = (
    "periodic_lon",
    "bicubic_residual",
    "pos_encoding",
    "arithmetic",
    "input_range",
    "in_channels",
    "out_channels",
    "pos2weight.activation",  # the weight predictor's (Pos2Weight(activation=...))
)


def _option(model: nn.Module, path: str) -> object:
    """``model``'s attribute at the dotted ``path`` (None where any part is missing)."""
    for name in path.split("."):
        model = getattr(model, name, None)
    return model


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    kwargs: dict,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model``'s weights and how to rebuild it to a safetensors file.

    Before anything is written, ``create_model(arch, **kwargs)`` is rebuilt on the ``meta``
    device (no memory) and its state dict compared with ``model``'s, so a file that would not
    load is never written.

    Args:
        path: destination ``.safetensors`` file (written atomically).
        model: the network; its ``state_dict`` is stored.
        arch: registry name, so that ``metasr.create_model(arch, **kwargs)`` rebuilds it.
        kwargs: JSON-serialisable constructor arguments.
        metadata: extra string entries (training notes, source checkpoint, ...).

    Raises:
        TypeError: ``kwargs`` is not a mapping of argument names.
        ValueError: ``arch`` is not registered, ``kwargs`` is not JSON-serialisable, ``arch``
            and ``kwargs`` describe another network than ``model``
            (other names or shapes), or the weights hold NaN or infinity.
    """
    _require_safetensors()
    from safetensors.torch import save_file

    from . import archs
    from ._version import __version__
    from .archs._registry import model_entry
    from .io import atomic_write

    entry = model_entry(arch)  # ValueError for an unregistered name
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ArgumentTypeError(f"kwargs must be a mapping of argument names, got {kwargs!r}")
    try:
        kwargs_json = json.dumps(dict(kwargs), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"kwargs must be JSON-serialisable: {exc}") from None
    with torch.device("meta"):
        rebuilt = archs.create_model(entry.name, **kwargs)
    mismatch = describe_mismatch(rebuilt.state_dict(), model.state_dict())
    if mismatch is not None:
        raise ValueError(
            f"{path}: create_model({entry.name!r}, **kwargs) does not rebuild this "
            f"{type(model).__name__} (the file would never load): {mismatch}"
        )
    # Options that change the function but not the weights' names or shapes: a file that
    # loads but computes something else is worse than one that does not load.
    for path_ in _BEHAVIOUR_OPTIONS:
        want, got = _option(model, path_), _option(rebuilt, path_)
        if want != got:
            attr = path_.rsplit(".", 1)[-1]
            raise ValueError(
                f"{path}: create_model({entry.name!r}, **kwargs) rebuilds {attr}={got!r} but "
                f"the network has {attr}={want!r}; pass {attr} in kwargs"
            )
    _check_finite(model, f"for {path}")

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        format=CHECKPOINT_FORMAT,
        format_version=_FORMAT_VERSION,
        arch=entry.name,
        kwargs=kwargs_json,
        metasr_version=__version__,
    )
    # safetensors refuses tensors that share storage; a copy of each makes every entry its own.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_checkpoint(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    """Rebuild a model from a metasr safetensors checkpoint (see :func:`save_checkpoint`).

    The metadata is checked (``arch`` a registered name, ``kwargs`` a JSON object) and the
    network measured on the ``meta`` device before the tensors are read or anything is built,
    so crafted metadata (``n_feats=10**6``: terabytes) is refused without allocating.

    Raises:
        ValueError: the file is not a safetensors file, lacks metasr metadata, names an unknown
            architecture, has ``kwargs`` that are not a JSON object of constructor arguments,
            describes a network above the size caps of :func:`metasr.create_model`, its
            tensors do not fit the architecture or hold NaN or infinity, or its field
            statistics are corrupt (:class:`LoadedModel`).
    """
    _require_safetensors()
    from safetensors import safe_open
    from safetensors.torch import load_file

    from . import archs

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "arch" not in meta:
        raise ValueError(
            f"{path}: a safetensors file without metasr model metadata (format, arch, kwargs); "
            "it is not a metasr model checkpoint"
        )
    arch = meta["arch"]
    try:
        kwargs = json.loads(meta.get("kwargs", "{}"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt 'kwargs' metadata ({exc})") from exc
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"{path}: 'kwargs' metadata must be a JSON object of constructor arguments, "
            f"got a {type(kwargs).__name__}"
        )
    if arch not in archs.list_models():
        raise ValueError(
            f"{path}: architecture {arch!r} is not registered "
            f"(known: {', '.join(archs.list_models())}); is this metasr version too old?"
        )
    try:
        model = archs.create_model(arch, **kwargs)
    except (TypeError, ValueError) as exc:  # the file's content, not the caller's argument
        raise ValueError(f"{path}: cannot build {arch} from its metadata: {exc}") from exc
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    _load_state(model, state, path)
    return _finish(model, name or str(path), arch, kwargs, meta, "metasr")


# --------------------------------------------------------------------------------------------
# PyTorch files: BasicSR and official


def _sniff(path: Path) -> Literal["safetensors", "torch"] | None:
    """The container of ``path`` from its first bytes, or None when it is neither."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first:
    # a header length whose low byte is 0x80 would otherwise pass for a pickle's PROTO opcode.
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    # torch.save writes a zip archive; before PyTorch 1.6 (and with the legacy option) a pickle
    # whose first opcode is PROTO (0x80).
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return None


def check_archive_size(path: Path) -> None:
    """Refuse a ``torch.save`` zip archive whose declared (uncompressed) sizes exceed the free
    memory, before ``torch.load`` inflates it (a 1.9 MB deflated file can declare 2 GB).

    Raises:
        ValueError: the declared size and the free memory.
    """
    import zipfile

    from .ops.memory import available_memory_bytes, gib

    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a (readable) zip: torch.load reports it
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and declared > free:
        raise ValueError(
            f"{path}: the archive declares {gib(declared)} of tensors, more than the "
            f"{gib(free)} of free memory"
        )


def _read_torch(path: Path) -> object:
    check_archive_size(path)
    try:
        # weights_only: a checkpoint is data; never run the code a pickle can carry.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a PyTorch weights file that can be loaded safely ({type(exc).__name__})"
        ) from exc


def check_weights_file(path: Path) -> None:
    """Refuse a file that is not weights metasr reads safely (a PNG, a pickle of code, a
    truncated archive), in one line that never suggests ``weights_only=False``.

    Raises:
        ValueError: what the file is not.
    """
    kind = _sniff(path)
    if kind is None:
        raise ValueError(f"{path}: not a PyTorch (.pth) or safetensors weights file")
    if kind == "torch":
        _read_torch(path)
    else:
        load_checkpoint(path)


def _from_basicsr(
    obj: Mapping[str, Any],
    path: Path,
    network_opt: Mapping[str, Any] | None,
    param_key: str | None,
) -> LoadedModel:
    """A BasicSR-style checkpoint dict → model, built from ``network_opt`` or the file's own."""
    opt = network_opt if network_opt is not None else obj.get(NETWORK_KEY)
    if not isinstance(opt, Mapping):
        raise ValueError(
            f"{path}: a BasicSR training checkpoint that does not record its network (metasr's "
            f"MetaSRModel stores it under {NETWORK_KEY!r}); give the training options' network_g "
            "(metasr eval --opt X.yml), or convert it with scripts/export_default_model.py"
        )
    try:
        state, key = clean_state_dict(obj, param_key)
        net = build_network(opt)
    except (TypeError, ValueError) as exc:  # TypeError: an argument the constructor lacks
        raise ValueError(f"{path}: {exc}") from exc
    _load_state(net, state, path)
    kwargs = {k: v for k, v in opt.items() if k != "type"}
    metadata = {"param_key": key or "", "basicsr_type": str(opt["type"])}
    # A field model trained by MetaSRModel records its normalisation statistics in the file
    # (read and checked by LoadedModel).
    if isinstance(obj.get(STATS_KEY), str):
        metadata[STATS_KEY] = obj[STATS_KEY]
    return _finish(net, str(path), _registry_name(str(opt["type"])), kwargs, metadata, "basicsr")


def _from_torch_object(
    obj: object,
    path: Path,
    network_opt: Mapping[str, Any] | None = None,
    param_key: str | None = None,
) -> LoadedModel:
    """Classify a loaded PyTorch object by its entries and build the model it describes."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a model's weights")
    # A recorded or given network description decides: it says what the weights are.
    if network_opt is not None or param_key is not None or NETWORK_KEY in obj:
        return _from_basicsr(obj, path, network_opt, param_key)
    try:
        state, _ = clean_state_dict(obj)
    except ValueError:
        state = None
    first, heads = _OFFICIAL_KEYS
    if state is not None and first in state and any(k in state for k in heads):
        from .archs import load_official_metardn

        try:
            model = load_official_metardn(state)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return _finish(model, str(path), "official", {}, {}, "official")
    if any(is_state_dict(obj.get(k)) for k in ("params_ema", "params")):
        return _from_basicsr(obj, path, None, None)  # raises: no network description
    what = f"a state dict of {len(state)} tensors" if state is not None else "a dict"
    raise ValueError(
        f"{path}: not a model checkpoint: {what} that is neither the official Meta-SR MetaRDN "
        "nor a metasr/BasicSR checkpoint recording its architecture (expected a metasr "
        ".safetensors file, a BasicSR net_g_*.pth, or the official Meta-SR model_1000.pt)"
    )


def load_basicsr_checkpoint(
    path: str | os.PathLike,
    network_opt: Mapping[str, Any] | None = None,
    param_key: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A network with the weights of a BasicSR checkpoint (``net_g_*.pth``).

    Args:
        path: file holding ``{"params": state_dict, ...}`` (``params_ema`` preferred when
            present and ``param_key`` is None).
        network_opt: ``network_g`` options; default: the file's ``metasr_network`` entry.
        param_key: which state dict to load.

    Returns:
        ``(network in eval mode, network options used)``.

    Raises:
        ValueError: the file is not such a checkpoint, or has no network options and none were
            given.
    """
    path = Path(path)
    obj = _read_torch(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a BasicSR checkpoint")
    loaded = _from_basicsr(obj, path, network_opt, param_key)
    return loaded.model, {"type": loaded.metadata["basicsr_type"], **loaded.kwargs}


# --------------------------------------------------------------------------------------------
# the one entry point


def _load_file(
    path: Path, network_opt: Mapping[str, Any] | None, param_key: str | None
) -> LoadedModel:
    container = _sniff(path)
    if container == "torch":
        return _from_torch_object(_read_torch(path), path, network_opt, param_key)
    if container == "safetensors":
        if network_opt is not None or param_key is not None:
            raise ValueError(
                f"{path}: a safetensors checkpoint records its own network; network options "
                "and param_key apply to BasicSR .pth checkpoints only"
            )
        return load_checkpoint(path)
    if path.suffix.lower() == ".safetensors":
        raise ValueError(f"{path}: not a readable safetensors file (no safetensors header)")
    if _looks_like_onnx(path):
        return _load_onnx(path)
    raise ValueError(
        f"{path}: not a model checkpoint (expected a metasr .safetensors file, a BasicSR "
        "net_g_*.pth, or the official Meta-SR model_1000.pt)"
    )


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX ``ModelProto`` starts with its field 1 (``ir_version``, a varint): byte 0x08."""
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x08" or path.suffix.lower() == ".onnx"


def _load_onnx(path: Path) -> LoadedModel:
    """An ONNX file written by ``metasr export``, run by onnxruntime (:class:`~.export.OnnxModel`).

    Its ``model`` takes only the input size (or any, for a dynamic-size file) and request it
    was exported for.
    """
    from .export import OnnxModel

    model = OnnxModel(path)
    size = "dynamic" if model.input_size is None else "{}x{}".format(*model.input_size)
    meta = {"request": model.request, "input_size": size}
    if STATS_KEY in model.metadata:  # validated like a checkpoint's entry: checkpoint_stats
        meta[STATS_KEY] = model.metadata[STATS_KEY]
    return LoadedModel(
        model=model,
        name=str(path),
        arch="onnx",
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        value_range=model.value_range,
        metadata=meta,
        format="onnx",
    )


def load_model(
    spec: str | os.PathLike = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    network_opt: Mapping[str, Any] | None = None,
    param_key: str | None = None,
) -> LoadedModel:
    """Load a model by name or path (see the module docstring) onto ``device``, in eval mode.

    Args:
        spec: a bundled model's name (``"default"``, ``"default-v1"``, ``"t2m"``), a checkpoint
            path, or a registry name.
        device: where the model runs.
        dtype: parameter dtype (``torch.float16`` for half precision).
        backend: Meta-Upscale backend for every head (:func:`set_backend`; ``None``: keep the
            model's).
        network_opt: BasicSR ``network_g`` options describing a ``.pth`` checkpoint's network
            (instead of the ``metasr_network`` entry the file may record).
        param_key: BasicSR entry to load (default ``params_ema`` if present, else ``params``).

    Raises:
        FileNotFoundError: a path that does not exist, or a bundled model missing from this
            installation.
        ValueError: the file is not a model checkpoint, the name is not registered, the
            backend is unknown, ``device`` is not a device of this machine
            (:func:`resolve_device`), or ``dtype`` is not a floating-point dtype.
        TypeError: ``dtype`` is not a ``torch.dtype``, ``backend`` not a string.
    """
    device = resolve_device(device)
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if backend is not None:
        from .ops.meta_upscale.dispatch import check_backend_name

        backend = check_backend_name(backend)  # before anything is read or built
    spec = str(spec)
    path = Path(spec)
    if spec in BUNDLED_MODELS:
        from .weights import bundled_checkpoint

        loaded = load_checkpoint(bundled_checkpoint(spec), name=spec)
    elif path.is_file():
        loaded = _load_file(path, network_opt, param_key)
    elif path.exists():
        raise ValueError(f"{path}: not a file")
    elif os.sep in spec or path.suffix.lower() in (".safetensors", ".pt", ".pth"):
        raise FileNotFoundError(f"model file {spec}: no such file")
    else:
        from . import archs

        if spec.lower() not in archs.list_models():
            raise ValueError(
                f"model {spec!r}: no such file, and not 'default' or a registered architecture "
                f"({', '.join(archs.list_models())}); bundled models: {', '.join(BUNDLED_MODELS)}"
            )
        warnings.warn(
            f"model {spec!r} is built with random weights; its output is not a real upscaling",
            stacklevel=2,
        )
        loaded = _finish(archs.create_model(spec), spec, spec.lower(), {}, {}, "registry")
    if backend is not None:
        _use_backend(loaded.model, backend)
    loaded.model.to(device=device, dtype=dtype)
    return loaded


def checkpoint_stats(loaded: LoadedModel) -> FieldStats | None:
    """The normalisation statistics stored with a loaded model, or ``None``.

    A corrupt entry, or one for another number of variables than the network's input
    channels, was refused when the model was loaded (:class:`LoadedModel`).
    """
    return loaded.stats
