"""Lazy, chunked downscaling (issue 24): dask-backed fields, a distributed cluster, weights
computed once, and the CLI's streamed netCDF/Zarr output."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from metasr import climate as mc
from metasr.cli import main
from metasr.climate import io as cio

rg = importlib.import_module("metasr.climate.regrid")  # the name `regrid` is the function

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")
dask = pytest.importorskip("dask")


def field(n: int = 5, nan: bool = True) -> xr.DataArray:
    rng = np.random.default_rng(3)
    data = (280 + 3 * rng.standard_normal((n, 9, 16))).astype(np.float32)
    if nan:
        data[:, 3, 2:5] = np.nan
        data[1] = np.nan  # one whole time step missing: its chunk must not fail
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": np.arange(n, dtype=np.float64),
            "lat": ("lat", np.linspace(-80, 80, 9), {"units": "degrees_north"}),
            "lon": ("lon", np.arange(16) * 22.5, {"units": "degrees_east"}),
        },
        name="tas",
        attrs={"units": "K"},
    )


def smooth_fn(filled: np.ndarray, src: mc.Grid, dst: mc.Grid) -> np.ndarray:
    """A stand-in network: bicubic of the filled field, plus one."""
    return mc.regrid(filled, src, dst, "bicubic") + 1.0


@pytest.mark.parametrize("method", [*mc.METHODS, smooth_fn])
def test_dask_input_gives_a_lazy_float32_result_equal_to_the_eager_one(method):
    da = field()
    eager = mc.downscale(da, "19x40", method)
    lazy = mc.downscale(da.chunk({"time": 2}), "19x40", method)
    assert lazy.chunks is not None and lazy.chunks[0] == (2, 2, 1)
    assert lazy.chunks[1:] == ((19,), (40,))
    assert lazy.dtype == np.float32 and eager.dtype == np.float32
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert np.isnan(eager.values[1]).all() and np.isfinite(eager.values[0]).any()


def test_float64_stays_float64_and_packed_integers_unpack_to_float32(tmp_path: Path):
    da = field(nan=False)
    assert mc.downscale(da.astype(np.float64), "19x40", "bilinear").dtype == np.float64
    packed = tmp_path / "packed.nc"
    da.to_dataset().to_netcdf(
        packed,
        encoding={"tas": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0,
                          "_FillValue": -32768}},
    )  # fmt: skip
    read = mc.read_field(packed, "tas")
    assert read.encoding["dtype"] == np.int16
    assert mc.downscale(read, "19x40", "bilinear").dtype == np.float32


def test_weights_are_computed_once_per_grids_and_method(monkeypatch):
    calls = []
    real = rg._axis_weights

    def counting(src, dst, method):
        calls.append(method)
        return real(src, dst, method)

    monkeypatch.setattr(rg, "_axis_weights", counting)
    rg._WEIGHTS.clear()
    mc.downscale(field(nan=False).chunk({"time": 1}), "23x41", "bilinear").compute()
    mc.downscale(field(nan=False), "23x41", "bilinear")
    assert calls == ["bilinear"]  # five chunks and a second call: one computation
    mc.downscale(field(nan=False), "23x41", "conservative")
    mc.downscale(field(nan=False), "23x42", "bilinear")
    assert calls == ["bilinear", "conservative", "bilinear"]


def test_a_distributed_cluster_gives_the_eager_result():
    distributed = pytest.importorskip("distributed")
    da = field()
    eager = mc.downscale(da, "19x40", "conservative")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = mc.downscale(da.chunk({"time": 2}), "19x40", "conservative")
        got = client.compute(lazy.data).result()
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_array_equal(got, eager.values)


def test_cli_streams_in_chunks_and_writes_netcdf_or_zarr(tmp_path: Path, capsys):
    src = tmp_path / "in.nc"
    field().to_dataset().to_netcdf(src)
    want = mc.downscale(mc.read_field(src, "tas"), "19x40", "bilinear")
    for name in ("out.nc", "out.zarr"):
        out = tmp_path / name
        argv = ["upscale", str(src), "--var", "tas", "--target-grid", "19x40",
                "--baseline", "bilinear", "--chunk", "2", "-o", str(out), "-q"]  # fmt: skip
        assert main(argv) == 0
        got = xr.open_zarr(out) if name.endswith(".zarr") else xr.open_dataset(out)
        assert got["tas"].dtype == np.float32
        np.testing.assert_array_equal(got["tas"].values, want.values)
        got.close()
        # An existing output is refused (one line, untouched) unless --overwrite.
        stamp = out.stat().st_mtime_ns
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--overwrite" in err
        assert out.stat().st_mtime_ns == stamp
        assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc", "out.nc", "out.zarr"]


def test_default_chunk_follows_the_memory_limit(monkeypatch):
    src, dst = mc.named_grid("n96"), mc.named_grid("era5")
    monkeypatch.setattr(cio, "_memory_available", lambda: 2 << 30)
    assert cio.default_chunk(src, dst) == 4  # at most 4 steps
    monkeypatch.setattr(cio, "_memory_available", lambda: 256 << 20)
    assert cio.default_chunk(src, dst) == 1  # a quarter of 256 MiB holds one ~42 MB step
    monkeypatch.setattr(cio, "_memory_available", lambda: 64 << 20)
    assert cio.default_chunk(src, dst) == 1


def test_downscale_with_model_is_lazy_and_equal_for_dask_input(tmp_path: Path):
    torch = pytest.importorskip("torch")
    import metasr
    from metasr.checkpoints import load_model, save_checkpoint
    from metasr.climate.stats import FieldStats, stats_metadata

    torch.manual_seed(0)
    kw = {"in_channels": 1, "out_channels": 1, "n_resblocks": 1, "n_feats": 8}
    stats = FieldStats(("tas",), ("K",), (280.0,), (3.0,), "9x16")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, metasr.create_model("meta_edsr", **kw), "meta_edsr", kw,
                    metadata=stats_metadata(stats))  # fmt: skip
    loaded = load_model(path)
    da = field()
    eager = mc.downscale_with_model(da, loaded, "19x40")
    lazy = mc.downscale_with_model(da.chunk({"time": 2}), loaded, "19x40")
    assert lazy.chunks is not None and lazy.dtype == np.float32
    # Batches of other sizes: float32 rounding of a 280 K field (1 ulp = 3e-5).
    np.testing.assert_allclose(lazy.values, eager.values, rtol=0, atol=1e-4)
