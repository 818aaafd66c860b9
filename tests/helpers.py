"""Set-up shared by several test modules (imported as ``helpers`` from every test folder:
``pythonpath`` in pyproject.toml puts ``tests/`` on the path). Random parameters and fields, so
that no symmetry of a default initialisation (zero biases, a ×0.1 head, equal weights) hides a
misplaced row, column or position.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

ModuleT = torch.nn.Module


def randomize_parameters(module: ModuleT, std: float = 0.5) -> ModuleT:
    """Replace every parameter of ``module`` by N(0, std²) draws (from torch's global RNG).

    For weight predictors: random biases too, so that ReLU patterns differ between positions.
    Returns ``module``.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * std)
    return module


def perturb_parameters(module: ModuleT, std: float = 0.05) -> ModuleT:
    """Add N(0, std²) noise to every parameter of ``module`` (from torch's global RNG).

    For whole networks, where replacing the trained-scale initialisation would blow up the
    activations; biases and mean shifts that start at zero become non-zero. Returns ``module``.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


def random_field(*shape: int, seed: int = 1) -> torch.Tensor:
    """A float64 tensor of ``shape`` with uniform [0, 1) values from its own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64)


#: Constructor arguments that make every registered network (:func:`metasr.list_models`) tiny:
#: a forward takes milliseconds. Architecture tests parametrise over ``metasr.list_models()``
#: and look their arguments up here; tests/archs/test_archs.py checks that the keys are exactly
#: the registry's, so a new network cannot be registered without being tested.
TINY_MODELS: dict[str, dict] = {
    "meta_rdn": dict(G0=8, D=2, C=2, G=4, upsample={"hidden": 16}),
    "meta_edsr": dict(n_resblocks=1, n_feats=8, upsample={"hidden": 16}),
    "meta_edsr_tiny": dict(n_resblocks=1, n_feats=8, upsample={"hidden": 16}),
    "meta_swinir": dict(
        img_size=16,
        embed_dim=8,
        depths=(2,),
        num_heads=(2,),
        window_size=4,
        upsample={"hidden": 16},
    ),  # fmt: skip
}


#: Registered names that are another registered network with other defaults (the same class):
#: a test that sets every option itself would run that network twice.
SAME_NETWORK: dict[str, str] = {"meta_edsr_tiny": "meta_edsr"}


def registered_networks(table: dict) -> list:
    """``metasr.list_models()`` as pytest parameters for a test with its own per-network
    options in ``table``: a name of :data:`SAME_NETWORK` is skipped with that reason; any other
    name must have an entry (a newly registered network without one fails the test)."""
    import pytest

    import metasr

    params = []
    for name in metasr.list_models():
        if name in SAME_NETWORK and name not in table:
            reason = (
                f"{name} is {SAME_NETWORK[name]}'s class with other defaults, which this "
                "test's own options override: the same network again"
            )
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
        else:
            params.append(name)
    return params


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk (length, type, data, CRC), for hand-made PNG files."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    """``metasr ARGS`` in-process: ``(exit status, stdout, stderr)`` of this call only."""
    from metasr.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def single_line(err: str) -> str:
    """The one line of an error output (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def region_at_3_7(periodic_lon: bool, h: int = 8, w: int = 7):
    """Output rows 8..18 of an ``h × w`` input at ×3.7 and columns 8..18 (all columns with
    ``periodic_lon``, whose window wraps), computed from LR rows 1..6 and columns 1..6 (all)."""
    from metasr.geometry import Region

    H, W = int(h * 3.7 + 1e-6), int(w * 3.7 + 1e-6)
    cols = (0, w) if periodic_lon else (1, 6)
    out_cols = (0, W) if periodic_lon else (8, 18)
    return Region((h, w), (H, W), (1, 6), cols, (8, 18), out_cols)


def reordered_coordinate_grid():
    """A coordinate request with pole rows (not at an index ratio) and a descending target
    starting at 180°E: irregular phase classes, a periodic seam and the final reordering.
    Source 7 × 8, target 23 × 26."""
    from metasr.geometry import CoordinateGrid

    return CoordinateGrid(
        np.linspace(-90, 90, 7),
        np.arange(8) * 45.0,
        np.linspace(90, -90, 23),
        (180.0 + np.arange(26) * (360 / 26)) % 360.0,
    )


def assert_matches_spec(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, phi, what: str):
    """Forward and the gradients of ``x`` and ``phi``'s parameters against the spec's (float64
    tolerances of the torch backend, scaled by each tensor's largest value)."""
    from metasr.ops.meta_upscale.torch_chunked import TOLERANCES

    rtol, atol = TOLERANCES[torch.float64]
    scale = max(1.0, ref.abs().max().item())
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * scale, msg=lambda m: what + m)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    wrt = [x, *phi.parameters()]
    got = torch.autograd.grad(out, wrt, dy)
    want = torch.autograd.grad(ref, wrt, dy)
    for i, (g, e) in enumerate(zip(got, want, strict=True)):
        s = max(1.0, e.abs().max().item())
        torch.testing.assert_close(
            g, e, rtol=rtol, atol=atol * s, msg=lambda m, i=i: f"{what} grad {i}: {m}"
        )


def field_dataset(shape=(2, 8, 16), *, lat, name="t2m", value=280.0,
                  lat_units="degrees_north", units="K"):  # fmt: skip
    """A (time, lat, lon) float32 field ``value`` + N(0, 1) noise (seed 0) on the latitudes
    ``lat`` (h values, in ``lat_units``) and a global regular longitude axis, as an xarray
    Dataset; ``units=None`` leaves the variable without units."""
    import xarray as xr

    n, h, w = shape
    data = (value + np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    da = xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": np.arange(n),
            "lat": ("lat", lat, {"units": lat_units}),
            "lon": ("lon", np.arange(w) * (360.0 / w), {"units": "degrees_east"}),
        },
        attrs={"units": units} if units else {},
        name=name,
    )
    return da.to_dataset()
