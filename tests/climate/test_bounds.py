"""Cell bounds from the file (issue 24): the CF ``bounds`` of latitude/longitude give the
conservative weights; midpoints only when a file has none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from metasr import climate as mc
from metasr.cli import main

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")


def gaussian_file(path: Path, *, bounds: bool = True, nt: int = 2) -> tuple[Path, mc.Grid]:
    """A field on a 24×48 Gaussian grid with its exact latitude bounds in the file."""
    grid = mc.gaussian_grid(24, 48)
    lat2d = np.deg2rad(grid.lat)[:, None]
    lon2d = np.deg2rad(grid.lon)[None, :]
    base = 250 + 45 * np.cos(lat2d) ** 2 + 4 * np.sin(3 * lon2d) * np.cos(lat2d)
    data = np.stack([base + k for k in range(nt)]).astype(np.float32)
    lat_attrs = {"units": "degrees_north", "standard_name": "latitude"}
    lon_attrs = {"units": "degrees_east", "standard_name": "longitude"}
    variables = {"tas": (("time", "lat", "lon"), data, {"units": "K"})}
    if bounds:
        lat_attrs["bounds"], lon_attrs["bounds"] = "lat_bnds", "lon_bnds"
        # CF order (lower, upper) per cell, as CDO writes them; latitude runs north to south.
        variables["lat_bnds"] = (
            ("lat", "bnds"),
            np.stack([grid.lat_bounds[1:], grid.lat_bounds[:-1]], axis=-1),
        )
        variables["lon_bnds"] = (
            ("lon", "bnds"),
            np.stack([grid.lon_bounds[:-1], grid.lon_bounds[1:]], axis=-1),
        )
    ds = xr.Dataset(
        variables,
        coords={
            "time": ("time", np.arange(nt, dtype=float), {"units": "days since 2000-01-01"}),
            "lat": ("lat", grid.lat, lat_attrs),
            "lon": ("lon", grid.lon, lon_attrs),
        },
    )
    ds.to_netcdf(path)
    return path, grid


def test_conservative_uses_the_files_bounds(tmp_path):
    src, grid = gaussian_file(tmp_path / "in.nc")
    out = tmp_path / "out.nc"
    argv = ["upscale", str(src), "--var", "tas", "--target-grid", "37x72", "--baseline",
            "conservative", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    got = xr.open_dataset(out)["tas"].values.astype(np.float64)
    values = xr.open_dataset(src)["tas"].values.astype(np.float64)
    dst = mc.named_grid("37x72")
    exact = mc.regrid(values, grid, dst, "conservative")
    midpoints = mc.regrid(values, mc.Grid.from_coords(grid.lat, grid.lon), dst, "conservative")
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-4)  # float32 output
    assert np.abs(midpoints - exact).max() > 0.1  # midpoint bounds would be visibly off
    # With the exact cells, the area-weighted global mean is conserved.
    src_mean = (values * grid.cell_areas()).sum((-2, -1)) / grid.cell_areas().sum()
    dst_mean = (exact * dst.cell_areas()).sum((-2, -1)) / dst.cell_areas().sum()
    np.testing.assert_allclose(dst_mean, src_mean, rtol=1e-12)


def test_grid_of_a_dataset_reads_bounds_and_midpoints_without_them(tmp_path):
    src, grid = gaussian_file(tmp_path / "in.nc")
    with xr.open_dataset(src) as ds:
        got = mc.grid_of(ds, "tas")
    np.testing.assert_allclose(got.lat_bounds, grid.lat_bounds, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.lon_bounds, grid.lon_bounds, rtol=0, atol=1e-12)
    plain, _ = gaussian_file(tmp_path / "plain.nc", bounds=False)
    with xr.open_dataset(plain) as ds:
        mid = mc.grid_of(ds, "tas")
    np.testing.assert_allclose(mid.lat_bounds, mc.Grid.from_coords(grid.lat, grid.lon).lat_bounds)


def test_non_contiguous_bounds_are_refused_in_one_line(tmp_path, capsys):
    src, _ = gaussian_file(tmp_path / "in.nc")
    with xr.open_dataset(src) as ds:
        ds = ds.load()
    b = ds["lat_bnds"].values.copy()
    b[5, 0] += 0.5  # a gap between two cells
    ds["lat_bnds"] = (("lat", "bnds"), b)
    ds.to_netcdf(tmp_path / "bad.nc")
    out = tmp_path / "out.nc"
    argv = ["upscale", str(tmp_path / "bad.nc"), "--var", "tas", "--target-grid", "37x72",
            "--baseline", "conservative", "-o", str(out), "-q"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not contiguous" in err, err
    assert not out.exists()


@pytest.mark.skipif(shutil.which("cdo") is None, reason="CDO not installed (apt-get install cdo)")
def test_conservative_equals_cdo_remapcon_with_gaussian_bounds(tmp_path):
    src, _ = gaussian_file(tmp_path / "in.nc")
    dst = mc.named_grid("37x72")
    target = tmp_path / "target.nc"
    mc.grid_dataset(dst).to_netcdf(target)
    cdo_out = tmp_path / "cdo.nc"
    subprocess.run(
        ["cdo", "-s", f"remapcon,{target}", str(src), str(cdo_out)], check=True, timeout=120
    )
    ours = tmp_path / "ours.nc"
    argv = ["upscale", str(src), "--var", "tas", "--target-grid", "37x72", "--baseline",
            "conservative", "-o", str(ours), "-q"]  # fmt: skip
    assert main(argv) == 0
    want = xr.open_dataset(cdo_out)["tas"].values
    got = xr.open_dataset(ours)["tas"].values
    # Measured: 1.5e-5 K (float32 rounding); midpoint bounds would be 0.11 K off.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
