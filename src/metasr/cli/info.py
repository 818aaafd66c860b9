"""``metasr info``: versions, devices, Meta-Upscale backends and the bundled model.

Meant to be pasted into bug reports: it imports nothing heavy beyond torch, and reports an
optional package that is missing instead of failing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata

from . import one_line

__all__ = ["collect", "register"]

#: Core dependencies the command line needs (distribution name → what metasr uses it for).
OPTIONAL_PACKAGES = {
    "Pillow": "PNG/JPEG/BMP/WebP",
    "pypng": "16-bit PNG",
    "tifffile": "TIFF",
    "safetensors": "model checkpoints",
    "tqdm": "progress bars",
}

#: What each extra of metasr.EXTRAS enables.
EXTRA_PURPOSE = {
    "triton": "fused GPU backend (CUDA)",
    "train": "metasr train/test (BasicSR), figures",
    "climate": "netCDF fields (.nc input, .nc or .zarr output, lazy dask runs)",
    "export": "metasr export, --model file.onnx",
    "web": "metasr serve (the local web app)",
    "dev": "running the tests",
}


def _extra_status(extra: str) -> dict:
    """Each package of ``extra`` with its version, and whether all its modules import."""
    import importlib

    from .._extras import EXTRAS, install_hint

    packages = {dist: _version(dist) for dist, _ in EXTRAS[extra]}
    error = None
    for dist, module in EXTRAS[extra]:
        try:
            # BasicSR 1.4.2 imports a torchvision module that no longer exists; metasr's
            # integration installs a stand-in first, so that import is the one that counts.
            importlib.import_module("metasr.integrations.basicsr" if dist == "basicsr" else module)
        except Exception as exc:  # noqa: BLE001 - a broken install can raise anything
            error = f"{module}: {one_line(exc) or type(exc).__name__}"
            break
    return {
        "packages": packages,
        "imports": error is None,
        "error": error,
        "install": install_hint(extra),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """Everything ``metasr info`` prints, as a JSON-serialisable dict."""
    import torch

    import metasr
    from metasr.ops.meta_upscale import fused_cpu
    from metasr.weights import BUNDLED, DEFAULT_CHECKPOINT

    devices = [{"name": "cpu", "threads": torch.get_num_threads(), "processor": platform.machine()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "name": f"cuda:{i}",
                    "model": prop.name,
                    "capability": f"{prop.major}.{prop.minor}",
                    "memory_gib": round(prop.total_memory / 2**30, 1),
                }
            )
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "metasr": metasr.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": _version("numpy"),
        "optional": {name: _version(name) for name in OPTIONAL_PACKAGES},
        "extras": {extra: _extra_status(extra) for extra in EXTRA_PURPOSE},
        "devices": devices,
        "backends": {t: metasr.backends(t) for t in device_types},
        # None when usable; with METASR_CPU_KERNELS=1 this builds it (first use, ~30 s).
        "cpu_kernel": fused_cpu.unavailable_reason(),
        "default_model": {
            "path": str(DEFAULT_CHECKPOINT),
            "present": DEFAULT_CHECKPOINT.is_file(),
        },
        "bundled_models": {
            name: {"path": str(path), "present": path.is_file()} for name, path in BUNDLED.items()
        },
    }


def _print(info: dict) -> None:
    print(f"metasr       {info['metasr']}")
    print(f"python       {info['python']}")
    print(f"platform     {info['platform']}")
    cuda = info["torch_cuda"] or "CPU-only build"
    print(f"torch        {info['torch']} (CUDA {cuda})")
    print(f"numpy        {info['numpy']}")
    print("packages:")
    for name, purpose in OPTIONAL_PACKAGES.items():
        version = info["optional"][name] or "not installed"
        print(f"  {name:<13}{version:<16}{purpose}")
    print("extras (pip install 'metasr[EXTRA]'):")
    for extra, entry in info["extras"].items():
        state = "imports" if entry["imports"] else f"missing ({entry['error']}; {entry['install']})"
        print(f"  {extra:<13}{state}: {EXTRA_PURPOSE[extra]}")
        versions = ", ".join(f"{d} {v or 'not installed'}" for d, v in entry["packages"].items())
        print(f"  {'':<13}{versions}")
    print("devices:")
    for dev in info["devices"]:
        if dev["name"] == "cpu":
            print(f"  cpu          {dev['processor']}, {dev['threads']} threads")
        else:
            print(
                f"  {dev['name']:<13}{dev['model']}, compute {dev['capability']}, "
                f"{dev['memory_gib']} GiB"
            )
    for device_type, table in info["backends"].items():
        print(f"backends on {device_type}:")
        for name, reason in table.items():
            print(f"  {name:<13}{'available' if reason is None else 'unavailable: ' + reason}")
        if device_type == "cpu":
            reason = info["cpu_kernel"]
            state = "available" if reason is None else "unavailable: " + reason
            print(f"  {'':<13}torch's compiled CPU intervals order: {state}")
    print("bundled models (--model NAME):")
    for name, entry in info["bundled_models"].items():
        print(f"  {name:<13}{'present' if entry['present'] else 'MISSING'}: {entry['path']}")


def _model_info(name: str) -> dict:
    """What ``metasr info --model NAME`` prints: architecture, size and the model card."""
    from metasr.checkpoints import load_model
    from metasr.climate.card import model_card

    loaded = load_model(name)
    card = model_card(loaded)
    n = sum(p.numel() for p in loaded.model.parameters())
    return {
        "model": name,
        "arch": loaded.arch,
        "parameters": n,
        "kwargs": loaded.kwargs,
        "card": None if card is None else json.loads(card.to_json()),
        "card_text": None if card is None else card.describe(),
    }


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        from . import CLIError

        try:
            info = _model_info(args.model)
        except (ValueError, FileNotFoundError) as exc:
            raise CLIError(f"bad --model {args.model!r}: {exc}") from None
        if args.json:
            print(json.dumps({k: v for k, v in info.items() if k != "card_text"}, indent=2))
            return 0
        print(f"model        {info['model']} ({info['arch']}, {info['parameters']} parameters)")
        print(
            info["card_text"]
            or "no model card (a model from before issue 23, or not a field model)"
        )
        return 0
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="versions, devices and backends",
        description="Print versions, devices, Meta-Upscale backends (with the reason when one "
        "cannot run) and whether the bundled default model is present.",
    )
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument(
        "--model", metavar="NAME", help="print this model's architecture and model card instead"
    )
    p.set_defaults(func=run)
