"""Conservation by construction: the minimum-change correction under conservative coarsening.

Harder et al., "Hard-constrained deep learning for climate downscaling" (JMLR 2023), make a
network's output conservative with a final constraint layer. This is the additive form for
arbitrary grids: given a fine field ``y`` on ``dst`` and the coarse input ``x`` on ``src``,

    y' = argmin_{z} Σ a_k (z_k − y_k)²   subject to   C z = x   (on the covered source cells)

where ``C`` is the first-order conservative coarsening of ``dst`` back onto ``src`` (the
overlap-area-weighted mean, cells rectangles in (longitude, sin latitude), as
:func:`metasr.climate.regrid` with ``"conservative"``) and ``a_k`` the fine cell areas. The
solution is ``y' = y + W⁻¹Cᵀ(C W⁻¹ Cᵀ)⁻¹ (x − C y)``. Because both ``C`` and the areas are
separable (``C = C_lat ⊗ C_lon``, ``a = Δsin φ ⊗ Δλ``), the correction is two small matrices:

    y' = y + P_lat (x − C_lat y C_lonᵀ) P_lonᵀ,   P = D⁻¹Cᵀ(C D⁻¹ Cᵀ)⁻¹ per axis,

so it costs two thin matrix products whatever the ratio, nested or not, and it is
differentiable (a fixed affine map of ``y``). Source cells that the target grid does not cover
completely (a regional target inside a global source) carry no constraint. Rows listed as
``frozen`` (the pole rows, which hold one value each) are not changed: the other rows absorb
the correction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .grids import POLE_TOL, Grid
from .regrid import axis_weights

__all__ = [
    "ConservativeConstraint",
    "MaskedConservativeConstraint",
    "bicubic_conservative",
    "broadcast_masks",
    "conserve_masked",
    "constraint_for",
    "pole_rows",
]

# A source cell counts as covered when the target's cells fill this fraction of it.
_COVERED = 1.0 - 1e-6


def pole_rows(grid: Grid) -> np.ndarray:
    """``(H,)`` bool: rows centred on a pole of a global (periodic) grid."""
    if not grid.periodic_lon:
        return np.zeros(grid.shape[0], dtype=bool)
    return np.abs(np.abs(grid.lat) - 90.0) < POLE_TOL


def _axis_projector(
    overlap: np.ndarray,
    src_len: np.ndarray,
    dst_len: np.ndarray,
    frozen: np.ndarray | None,
    spread: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Covered source indices, the coarsening rows ``C`` and the projector ``P`` of one axis.

    Args:
        overlap: ``(n_src, n_dst)`` overlap lengths.
        src_len, dst_len: cell lengths (Δsin φ or Δλ) of source and target.
        frozen: ``(n_dst,)`` bool, target cells the correction must not change.
        spread: ``(n_dst, n_src)`` interpolation weights: the correction is then
            ``U (C U)⁻¹ r`` (smooth, the limit of back-projection with ``U``) instead of the
            area-weighted minimum change; ``None``: minimum change.
    """
    covered = overlap.sum(axis=1) >= _COVERED * src_len
    c = overlap[covered] / src_len[covered, None]
    if spread is not None:
        u = spread[:, covered].copy()
        if frozen is not None:
            u[frozen] = 0.0
        cu = c @ u
        if np.linalg.cond(cu) < 1e8:
            return np.flatnonzero(covered), c, u @ np.linalg.inv(cu)
        # An ill-conditioned interpolation (rare: tiny covered sets) falls back to minimum change.
    dinv = 1.0 / dst_len
    if frozen is not None:
        dinv = np.where(frozen, 0.0, dinv)
    gram = (c * dinv[None, :]) @ c.T
    # A source cell overlapping frozen target cells only would make the system singular; a tiny
    # ridge keeps it solvable (the constraint then holds to the ridge's size there only).
    gram += np.eye(gram.shape[0]) * 1e-12 * max(float(np.trace(gram)) / max(len(gram), 1), 1.0)
    p = np.linalg.solve(gram, c * dinv[None, :]).T  # (n_dst, n_covered)
    return np.flatnonzero(covered), c, p


class ConservativeConstraint:
    """The conservation constraint from ``dst`` (fine, the output's grid) to ``src`` (coarse).

    Args:
        src: the input's grid.
        dst: the output's grid (each axis may be in any order; the matrices follow it).
        frozen_rows: ``(H,)`` bool target rows left unchanged (default: none).
        smooth: spread the correction by bicubic interpolation (``U (C U)⁻¹``, the fixed point
            of bicubic back-projection) instead of the area-weighted minimum change, which is
            piecewise constant over nested source cells. Both make ``C y' = x`` exactly.

    Attributes:
        rows, cols: indices of the covered source rows and columns.
        c_lat, c_lon: ``(len(rows), H)``, ``(len(cols), W)`` conservative coarsening rows.
        p_lat, p_lon: ``(H, len(rows))``, ``(W, len(cols))`` the correction's projectors.

    Raises:
        ValueError: the target covers no source cell completely.
    """

    def __init__(
        self, src: Grid, dst: Grid, frozen_rows: np.ndarray | None = None, smooth: bool = False
    ) -> None:
        ov_lat, ov_lon = axis_weights(dst, src, "conservative")  # (h, H), (w, W)
        u_lat, u_lon = axis_weights(src, dst, "bicubic") if smooth else (None, None)
        dsin_src = np.abs(np.diff(np.sin(np.deg2rad(src.lat_bounds))))
        dsin_dst = np.abs(np.diff(np.sin(np.deg2rad(dst.lat_bounds))))
        self.rows, self.c_lat, self.p_lat = _axis_projector(
            ov_lat, dsin_src, dsin_dst, frozen_rows, u_lat
        )
        self.cols, self.c_lon, self.p_lon = _axis_projector(
            ov_lon, np.diff(src.lon_bounds), np.diff(dst.lon_bounds), None, u_lon
        )
        if self.rows.size == 0 or self.cols.size == 0:
            raise ValueError(
                f"the target grid {dst!r} covers no cell of the source grid {src!r} completely; "
                "there is nothing to conserve"
            )
        self._cache: dict[tuple[Any, Any], tuple[Any, ...]] = {}

    def _mats(self, like: Any) -> tuple[Any, ...]:
        import torch

        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(
                torch.as_tensor(m, dtype=like.dtype, device=like.device)
                for m in (self.c_lat, self.c_lon, self.p_lat, self.p_lon)
            )
            self._cache[key] += (
                torch.as_tensor(self.rows, device=like.device),
                torch.as_tensor(self.cols, device=like.device),
            )
        return self._cache[key]

    def coarsen(self, y: Any) -> Any:
        """Conservative coarsening of ``y`` ``(..., H, W)`` onto the covered source cells:
        ``(..., len(rows), len(cols))`` (numpy or torch, as given)."""
        if isinstance(y, np.ndarray):
            return self.c_lat @ y @ self.c_lon.T
        c_lat, c_lon, *_ = self._mats(y)
        return c_lat @ y @ c_lon.transpose(0, 1)

    def __call__(self, y: Any, x: Any) -> Any:
        """``y`` ``(..., H, W)`` corrected so that its coarsening equals ``x`` ``(..., h, w)``
        on every covered source cell; numpy arrays or torch tensors (differentiable in both)."""
        if isinstance(y, np.ndarray):
            target = np.asarray(x)[..., self.rows, :][..., self.cols]
            return y + self.p_lat @ (target - self.coarsen(y)) @ self.p_lon.T
        c_lat, c_lon, p_lat, p_lon, rows, cols = self._mats(y)
        target = x.index_select(-2, rows).index_select(-1, cols)
        resid = target - c_lat @ y @ c_lon.transpose(0, 1)
        return y + p_lat @ resid @ p_lon.transpose(0, 1)

    def error(self, y: Any, x: Any) -> float:
        """Largest ``|coarsen(y) − x|`` over the covered source cells."""
        if not isinstance(y, np.ndarray):
            y = y.detach().cpu().double().numpy()
            x = x.detach().cpu().double().numpy()
        target = np.asarray(x, dtype=np.float64)[..., self.rows, :][..., self.cols]
        return float(np.max(np.abs(self.coarsen(np.asarray(y, np.float64)) - target)))


class MaskedConservativeConstraint:
    """The conservation constraint over the *valid* target cells (a masked target grid).

    For a field with missing values (SST, marine air temperature: land missing), an input
    value is the mean over the valid part of its cell (what :func:`~metasr.climate.regrid`'s
    NaN-aware ``"conservative"`` gives, and what an observation over the sea is). The
    constraint then asks the same of the output: its mean over the valid target cells in each
    source cell equals the input, ``C_M y' = x`` with ``C_M[i, k] = a_ik m_k / Σ_k a_ik m_k``
    (``a_ik`` the overlap of target cell ``k`` with source cell ``i``, ``m`` the target's
    validity) — the "fraction of valid area" normalisation of conservative remapping. The
    whole-cell :class:`ConservativeConstraint` instead makes the mean over the whole cell
    equal ``x``, so the valid cells of a coastal cell are off by what the network put over
    land; that is a bias wherever the field changes towards the coast.

    ``C_M`` is not separable, so the correction is a sparse solve (one LU factorisation per
    mask, built once): ``smooth`` as in :class:`ConservativeConstraint`, ``y' = y + U_c
    (C_M U_c)⁻¹ r`` with ``U_c`` the bicubic interpolation from the constrained source cells;
    it falls back to the area-weighted minimum change over the valid target cells, ``y' = y +
    D⁻¹C_Mᵀ(C_M D⁻¹C_Mᵀ + εI)⁻¹ r`` (``ε`` 1e-12 of the mean diagonal, for constraints that
    depend on each other), where the smooth system is singular or does not solve to 1e-9.
    Duplicate constraints (two source cells over the same single valid target cell) are
    kept once. NumPy and SciPy only: an inference step, not differentiable.

    A source cell is constrained when the target covers it completely, the source value is
    valid (``src_valid``) and some valid, non-frozen target cell overlaps it.

    Args:
        src, dst: the input's and the output's grids (any order; the matrices follow it).
        dst_valid: ``(H, W)`` bool, the valid target cells.
        src_valid: ``(h, w)`` bool, the source values that are data (not filled); default all.
        frozen_rows: ``(H,)`` bool target rows left unchanged (the pole rows).
        smooth: the ``smooth`` correction (else minimum change).

    Raises:
        ValueError: masks of the wrong shape, or no source cell to constrain.
    """

    def __init__(
        self,
        src: Grid,
        dst: Grid,
        dst_valid: np.ndarray,
        src_valid: np.ndarray | None = None,
        frozen_rows: np.ndarray | None = None,
        smooth: bool = False,
    ) -> None:
        import scipy.sparse as sp

        dst_valid = np.asarray(dst_valid, dtype=bool)
        if dst_valid.shape != dst.shape:
            raise ValueError(f"dst_valid has shape {dst_valid.shape}, the target grid {dst.shape}")
        src_valid = np.ones(src.shape, bool) if src_valid is None else np.asarray(src_valid, bool)
        if src_valid.shape != src.shape:
            raise ValueError(f"src_valid has shape {src_valid.shape}, the source grid {src.shape}")
        frozen = np.zeros(dst.shape[0], bool) if frozen_rows is None else np.asarray(frozen_rows)
        ov_lat, ov_lon = axis_weights(dst, src, "conservative")  # (h, H), (w, W)
        dsin_src = np.abs(np.diff(np.sin(np.deg2rad(src.lat_bounds))))
        dsin_dst = np.abs(np.diff(np.sin(np.deg2rad(dst.lat_bounds))))
        dlon_src, dlon_dst = np.diff(src.lon_bounds), np.diff(dst.lon_bounds)
        covered = (ov_lat.sum(1) >= _COVERED * dsin_src)[:, None] & (
            ov_lon.sum(1) >= _COVERED * dlon_src
        )[None, :]
        c = sp.kron(sp.csr_matrix(ov_lat / dsin_src[:, None]),
                    sp.csr_matrix(ov_lon / dlon_src[:, None]), format="csr")  # fmt: skip
        m = dst_valid.ravel().astype(np.float64)
        movable = m * np.repeat(~frozen, dst.shape[1])
        cm = c @ sp.diags(m)
        frac = np.asarray(cm.sum(axis=1)).ravel()
        room = np.asarray((c @ sp.diags(movable)).sum(axis=1)).ravel()
        ok = covered.ravel() & src_valid.ravel() & (frac > 1e-9) & (room > 1e-9)
        index = np.flatnonzero(ok)
        if index.size == 0:
            raise ValueError("no source cell is covered, valid and over valid target cells")
        c = (sp.diags(1.0 / frac[index]) @ cm[index]).tocsr()
        # Two source cells whose only valid target cells are the same (one valid target cell
        # straddling their common edge, non-nested grids) give the same row: keep one, or the
        # system is singular. Their inputs agree when they come from that mask.
        seen: dict[bytes, int] = {}
        keep = []
        for i in range(c.shape[0]):
            lo, hi = c.indptr[i], c.indptr[i + 1]
            key = c.indices[lo:hi].tobytes() + np.round(c.data[lo:hi], 12).tobytes()
            if seen.setdefault(key, i) == i:
                keep.append(i)
        self.index = index[keep]  # constrained source cells (flat)
        self.c = c[keep]  # (n, H*W)
        self.shape = dst.shape
        self._solve = None
        if smooth:
            u_lat, u_lon = axis_weights(src, dst, "bicubic")  # (H, h), (W, w)
            u = sp.kron(sp.csr_matrix(u_lat), sp.csr_matrix(u_lon), format="csc")
            u = sp.diags(np.repeat(~frozen, dst.shape[1]).astype(float)) @ u[:, self.index]
            self._try(u.tocsr(), (self.c @ u).tocsc())
        if self._solve is None:
            area = np.outer(dsin_dst, np.abs(dlon_dst)).ravel()
            dinv = movable / area
            spread = (sp.diags(dinv) @ self.c.T).tocsr()  # (H*W, n)
            gram = (self.c @ spread).tocsc()
            # Constraints that still depend on each other: a tiny ridge gives their least-
            # squares compromise (exact where the inputs are consistent, as from one mask).
            ridge = 1e-12 * float(gram.diagonal().mean())
            self._try(spread, (gram + ridge * sp.identity(gram.shape[0])).tocsc(), check=False)

    def _try(self, spread: Any, system: Any, check: bool = True) -> None:
        """Use ``y + spread · system⁻¹ r`` if ``system`` factorises (and, with ``check``, solves
        to 1e-9)."""
        from scipy.sparse.linalg import splu

        try:
            lu = splu(system)
        except RuntimeError:  # exactly singular
            return
        probe = np.cos(np.arange(system.shape[0]))
        if check and np.max(np.abs(system @ lu.solve(probe) - probe)) > 1e-9:
            return
        self._solve = lambda r: spread @ lu.solve(r)

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``y`` ``(..., H, W)`` corrected so that its mean over the valid target cells of
        every constrained source cell equals ``x`` ``(..., h, w)`` there."""
        y = np.asarray(y, dtype=np.float64)
        lead = y.shape[:-2]
        yf = y.reshape(-1, self.shape[0] * self.shape[1]).T  # (H*W, N)
        xf = np.asarray(x, dtype=np.float64).reshape(len(yf.T), -1).T[self.index]
        out = yf + self._solve(xf - self.c @ yf)
        return out.T.reshape(*lead, *self.shape)

    def error(self, y: np.ndarray, x: np.ndarray) -> float:
        """Largest ``|C_M y − x|`` over the constrained source cells."""
        yf = np.asarray(y, np.float64).reshape(-1, self.shape[0] * self.shape[1]).T
        xf = np.asarray(x, dtype=np.float64).reshape(yf.shape[1], -1).T[self.index]
        return float(np.max(np.abs(self.c @ yf - xf)))


_CACHE: dict[bytes, Any] = {}


def constraint_for(
    src: Grid,
    dst: Grid,
    frozen: np.ndarray,
    smooth: bool,
    dst_valid: np.ndarray | None = None,
    src_valid: np.ndarray | None = None,
) -> ConservativeConstraint | MaskedConservativeConstraint:
    """The constraint of ``src`` → ``dst`` (masked when ``dst_valid`` is given), built once
    per grid pair and masks (the fields of a file, the batches of ``metasr upscale`` share it;
    the last 16 are kept)."""
    parts = [src.lat_bounds, src.lon_bounds, dst.lat_bounds, dst.lon_bounds, frozen]
    key = b"".join(np.ascontiguousarray(a, dtype=np.float64).tobytes() + b"|" for a in parts)
    key += bytes([smooth])
    if dst_valid is not None:
        key += b"|m" + np.packbits(dst_valid).tobytes()
        key += b"|s" + (b"" if src_valid is None else np.packbits(src_valid).tobytes())
    con = _CACHE.get(key)
    if con is None:
        if len(_CACHE) >= 16:
            _CACHE.pop(next(iter(_CACHE)))
        if dst_valid is None:
            con = ConservativeConstraint(src, dst, frozen_rows=frozen, smooth=smooth)
        else:
            con = MaskedConservativeConstraint(src, dst, dst_valid, src_valid, frozen, smooth)
        _CACHE[key] = con
    return con


def broadcast_masks(
    dst_valid: np.ndarray,
    src_valid: np.ndarray | None,
    n: int,
    src: Grid,
    dst: Grid,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The masks of ``n`` fields, one per field (read-only views, nothing copied).

    Args:
        dst_valid: ``(H, W)`` or ``(n, H, W)`` bool, the valid target cells.
        src_valid: ``(h, w)`` or ``(n, h, w)`` bool, the input values that are data, or None.
        n: the number of fields.
        src, dst: the source and target grids.

    Returns:
        ``(n, H, W)`` and ``(n, h, w)`` bool (None stays None).

    Raises:
        ValueError: masks that fit neither one grid nor ``n`` fields on it.
    """
    dv = np.asarray(dst_valid, dtype=bool)
    sv = None if src_valid is None else np.asarray(src_valid, dtype=bool)
    try:
        dv = np.broadcast_to(dv, (n, *dst.shape))
        sv = None if sv is None else np.broadcast_to(sv, (n, *src.shape))
    except ValueError:
        given = None if sv is None else sv.shape
        raise ValueError(
            f"masks {dv.shape} / {given} do not fit {n} fields on {dst.shape} / {src.shape}"
        ) from None
    return dv, sv


def conserve_masked(
    y: np.ndarray,
    x: np.ndarray,
    src: Grid,
    dst: Grid,
    dst_valid: np.ndarray,
    src_valid: np.ndarray | None = None,
    frozen: np.ndarray | None = None,
    smooth: bool = True,
) -> np.ndarray:
    """:class:`MaskedConservativeConstraint` on a batch whose fields may have their own masks.

    Args:
        y: ``(N, H, W)`` output on ``dst``.
        x: ``(N, h, w)`` finite input on ``src`` (missing values filled).
        dst_valid: ``(H, W)`` or ``(N, H, W)`` bool, the valid target cells.
        src_valid: ``(h, w)`` or ``(N, h, w)`` bool, the input values that are data; default all.
        frozen: ``(H,)`` bool rows left unchanged (default none).
        smooth: the ``smooth`` correction (else minimum change).

    Returns:
        ``(N, H, W)`` float64; fields with the same masks share one factorisation.

    Raises:
        ValueError: masks of the wrong shape.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    dv, sv = broadcast_masks(dst_valid, src_valid, n, src, dst)
    if sv is None:
        sv = np.ones((n, *src.shape), bool)
    frozen = np.zeros(dst.shape[0], bool) if frozen is None else np.asarray(frozen, bool)
    out = np.empty_like(y)
    groups: dict[bytes, list[int]] = {}
    for i in range(n):
        groups.setdefault(np.packbits(dv[i]).tobytes() + np.packbits(sv[i]).tobytes(), []).append(i)
    for idx in groups.values():
        con = constraint_for(src, dst, frozen, smooth, dv[idx[0]], sv[idx[0]])
        out[idx] = con(y[idx], np.asarray(x, dtype=np.float64)[idx])
    return out


def bicubic_conservative(
    field: np.ndarray,
    src: Grid,
    dst: Grid,
    *,
    src_valid: np.ndarray | None = None,
    dst_valid: np.ndarray | None = None,
) -> np.ndarray:
    """Bicubic regridding followed by back-projection (``--baseline bicubic-conservative``).

    Back-projection repeats ``y ← y + U(x − C y)`` (``U``: bicubic from ``src`` to ``dst``,
    ``C``: conservative coarsening of ``dst`` onto ``src``) until ``C y = x``; its limit is
    ``y + U (C U)⁻¹ (x − C y)``, computed here directly per axis
    (:class:`ConservativeConstraint` with ``smooth=True``; 30 explicit iterations agree with it
    to 1e-9 K on the GloSea4 cells of docs/climate.md). Conservative on every covered source
    cell.

    Args:
        field: ``(..., h, w)`` finite values on ``src`` (fill missing values first:
            :func:`~metasr.climate.regrid.apply_downscaler`).
        src, dst: source and (finer) target grid.
        src_valid, dst_valid: with ``dst_valid`` (``(H, W)`` or one per field), conservation
            over the valid target cells (:class:`MaskedConservativeConstraint`), from the
            source values ``src_valid`` marks as data (:func:`conserve_masked`).

    Returns:
        ``(..., H, W)`` float64 on ``dst``.
    """
    from .regrid import regrid

    x = np.asarray(field, dtype=np.float64)
    y = regrid(x, src, dst, "bicubic")
    if dst_valid is None:
        return constraint_for(src, dst, np.zeros(dst.shape[0], bool), True)(y, x)
    lead = x.shape[:-2]
    out = conserve_masked(
        y.reshape(-1, *dst.shape), x.reshape(-1, *src.shape), src, dst, dst_valid, src_valid
    )
    return out.reshape(*lead, *dst.shape)
