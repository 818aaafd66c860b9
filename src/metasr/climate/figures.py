"""Map figures of fields on their grids (needs matplotlib; results and demo scripts).

:func:`plot_field_maps` draws named fields side by side, each on its own grid (a coarse input
next to its downscalings), as cells between the grid's bounds (``pcolormesh``), so pole rows,
Gaussian rows and coarse cells are drawn where they lie; a second row zooms on a
latitude/longitude box. The spectra figure is :func:`metasr.climate.metrics.plot_zonal_spectra`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .grids import Grid

__all__ = ["ZOOMS", "plot_field_maps", "zoom_box"]

#: Named zoom boxes ``(lat0, lat1, lon0, lon1)`` in degrees (longitudes 0…360, lon0 < lon1).
ZOOMS: dict[str, tuple[float, float, float, float]] = {
    "himalaya": (20.0, 45.0, 65.0, 105.0),
    "andes": (-40.0, -5.0, 280.0, 300.0),
    "alps": (40.0, 52.0, 0.0, 20.0),
}


def zoom_box(spec: str | Sequence[float]) -> tuple[float, float, float, float]:
    """A zoom box from a name of :data:`ZOOMS` or ``(lat0, lat1, lon0, lon1)``.

    Raises:
        ValueError: an unknown name, or not four finite numbers with lat0 < lat1, lon0 < lon1.
    """
    if isinstance(spec, str):
        if spec in ZOOMS:
            return ZOOMS[spec]
        parts = spec.split(",")
    else:
        parts = list(spec)
    try:
        box = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not all(np.isfinite(box)) or not (box[0] < box[1] and box[2] < box[3]):
        raise ValueError(
            f"zoom {spec!r}: give a name ({', '.join(ZOOMS)}) or lat0,lat1,lon0,lon1 with "
            "lat0 < lat1 and lon0 < lon1"
        )
    return box  # type: ignore[return-value]


def _cut(values: np.ndarray, grid: Grid, box: tuple[float, float, float, float]) -> tuple:
    """The cells of ``grid`` whose centres lie in ``box``: values and their bounds."""
    lat0, lat1, lon0, lon1 = box
    rows = np.flatnonzero((grid.lat >= lat0) & (grid.lat <= lat1))
    cols = np.flatnonzero((grid.lon % 360.0 >= lon0) & (grid.lon % 360.0 <= lon1))
    if len(rows) == 0 or len(cols) == 0:
        raise ValueError(f"zoom box {box} holds no cell centre of the {grid.shape} grid")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return values[r0:r1, c0:c1], grid.lat_bounds[r0 : r1 + 1], grid.lon_bounds[c0 : c1 + 1]


def plot_field_maps(
    panels: Sequence[tuple[str, Any, Grid]],
    path: str | Path,
    *,
    zoom: tuple[float, float, float, float] | None = None,
    title: str = "",
    units: str = "",
    cmap: str = "viridis",
    limits: tuple[float, float] | None = None,
    reference: int = 0,
    dpi: int = 80,
) -> Path:
    """Draw fields side by side (globe, and a zoomed row) into a PNG; needs matplotlib.

    Args:
        panels: ``(label, values, grid)`` with ``values`` ``(H, W)`` on ``grid`` (each panel on
            its own grid).
        path: output file.
        zoom: ``(lat0, lat1, lon0, lon1)`` for a second row (:func:`zoom_box`), or ``None``.
        title: figure title.
        units: colour-bar label.
        cmap: matplotlib colour map.
        limits: ``(vmin, vmax)`` shared by every globe panel; default the 1st and 99.5th
            percentiles of the ``reference`` panel. The zoomed row has its own colour scale:
            those percentiles of the reference panel's zoomed part (so a mountain range is not
            one saturated colour).
        reference: index of the panel that sets the default colour scales (e.g. the truth).
        dpi: resolution of the PNG.

    Returns:
        ``path``.

    Raises:
        ValueError: no panels, or a panel that is not ``(H, W)`` on its grid.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install matplotlib") from exc
    if not panels:
        raise ValueError("no panels to draw")
    arrays = []
    for label, values, grid in panels:
        a = np.asarray(values, dtype=np.float64)
        if a.shape != grid.shape:
            raise ValueError(f"panel {label!r} is {a.shape}, its grid {grid.shape}")
        arrays.append(a)
    if not 0 <= reference < len(panels):
        raise ValueError(f"reference {reference} is not a panel index (0…{len(panels) - 1})")

    def percentiles(a: np.ndarray) -> tuple[float, float]:
        finite = a[np.isfinite(a)]
        return float(np.percentile(finite, 1)), float(np.percentile(finite, 99.5))

    if limits is None:
        limits = percentiles(arrays[reference])
    row_limits = [limits]
    if zoom is not None:
        row_limits.append(percentiles(_cut(arrays[reference], panels[reference][2], zoom)[0]))
    n_rows = 2 if zoom is not None else 1
    fig, axes = plt.subplots(
        n_rows, len(panels), figsize=(3.2 * len(panels), 1.9 * n_rows + 0.6), squeeze=False
    )
    meshes: list[Any] = [None] * n_rows
    for j, ((label, _, grid), a) in enumerate(zip(panels, arrays, strict=True)):
        views = [(a, grid.lat_bounds, grid.lon_bounds)]
        if zoom is not None:
            views.append(_cut(a, grid, zoom))
        for i, (v, lat_b, lon_b) in enumerate(views):
            ax = axes[i][j]
            lo, hi = row_limits[i]
            meshes[i] = ax.pcolormesh(lon_b, lat_b, v, cmap=cmap, vmin=lo, vmax=hi, rasterized=True)
            ax.set_xlim(min(lon_b[0], lon_b[-1]), max(lon_b[0], lon_b[-1]))
            ax.set_ylim(min(lat_b[0], lat_b[-1]), max(lat_b[0], lat_b[-1]))
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(f"{label}\n{grid.shape[0]}×{grid.shape[1]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for i, mesh in enumerate(meshes):
        bar = fig.colorbar(mesh, ax=axes[i].tolist(), shrink=0.9, pad=0.01)
        bar.set_label(units, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    from ..io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    plt.close(fig)
    return path
