"""Per-variable normalisation statistics of a field model (:class:`FieldStats`), stored as JSON.

The climate side's value (:mod:`metasr.climate.stats` computes, stores and applies it; the
public name is :class:`metasr.climate.FieldStats`). It lives in this leaf module, below
:mod:`metasr.checkpoints`, because the checkpoint loaders validate a stored entry against the
network's channels when a file is loaded (:func:`stats_from_metadata`), and the climate package
sits above the checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .validation import ArgumentTypeError, is_real

__all__ = ["STATS_KEY", "FieldStats", "stats_from_metadata", "stats_metadata"]

#: Checkpoint metadata entry holding a model's :class:`FieldStats` as JSON.
STATS_KEY = "field_stats"
_STATS_VERSION = 1


@dataclass(frozen=True)
class FieldStats:
    """Per-variable normalisation of a model for physical fields: ``z = (x − mean) / std``.

    One entry per input channel of the network, in channel order. Stored in a checkpoint's
    metadata under :data:`STATS_KEY` (:func:`stats_metadata`), validated when the checkpoint is
    loaded, and applied by :func:`metasr.climate.downscale_with_model` (normalise → model →
    de-normalise).

    Attributes:
        variables: variable names (``("t2m",)``), informational: names differ between data sets.
        units: the units the statistics are in (``("K",)``); a field in other units is refused.
            ``""`` means unknown (statistics given by hand): no check.
        mean, std: per variable; ``std > 0``, both finite.
        grid: where they were computed (``"145x192 lat -90…90 lon 0…358.125"``), informational.

    Raises:
        TypeError: names, units or grid that are not strings, means or stds that are not numbers.
        ValueError: counts that disagree, a non-finite mean or std, std ≤ 0.
    """

    variables: tuple[str, ...]
    units: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grid: str = ""

    def __post_init__(self) -> None:
        n = len(self.variables)
        if n < 1 or not (len(self.units) == len(self.mean) == len(self.std) == n):
            raise ValueError(
                "field statistics need one name, unit, mean and std per variable, got "
                f"{len(self.variables)}, {len(self.units)}, {len(self.mean)}, {len(self.std)}"
            )
        for name, value in (("variables", self.variables), ("units", self.units)):
            if not all(isinstance(v, str) for v in value):
                raise ArgumentTypeError(f"field statistics: {name} must be strings, got {value!r}")
        for i, (m, s) in enumerate(zip(self.mean, self.std, strict=True)):
            if not (is_real(m) and is_real(s)):
                raise ArgumentTypeError(
                    f"field statistics of {self.variables[i]!r}: mean {m!r} and std {s!r} must "
                    "be numbers"
                )
            if not (math.isfinite(m) and math.isfinite(s) and s > 0):
                raise ValueError(
                    f"field statistics of {self.variables[i]!r}: mean {m!r} and std {s!r} must "
                    "be finite numbers with std > 0"
                )
        if not isinstance(self.grid, str):
            raise ArgumentTypeError(f"field statistics: grid must be a string, got {self.grid!r}")

    def _per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``mean``, ``std`` as ``(channels, 1, 1)`` float64: one variable's statistics serve
        every channel (each goes through the one-variable model on its own), else one entry
        per channel.

        Raises:
            ValueError: more than one variable, and not one per channel.
        """
        n = len(self.variables)
        if n != 1 and n != channels:
            raise ValueError(
                f"statistics for {n} variables ({', '.join(self.variables)}) cannot normalise "
                f"{channels} channels (one variable for all of them, or one per channel)"
            )
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        if n == 1:
            mean, std = np.repeat(mean, channels), np.repeat(std, channels)
        return mean[:, None, None], std[:, None, None]

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """``(values − mean) / std`` of a ``(C, h, w)`` field in the statistics' units, as
        float32 (what the network takes). The one place a field is normalised for a model
        (netCDF, ``.npy``, float TIFF, :func:`metasr.upscale`, ONNX files).

        Raises:
            TypeError: ``values`` is not a numpy array.
            ValueError: see :meth:`_per_channel`; ``values`` not ``(C, h, w)``.
        """
        if not isinstance(values, np.ndarray):
            raise ArgumentTypeError(f"expected an array (C, h, w), got {type(values).__name__}")
        if values.ndim != 3:
            raise ValueError(f"expected a field (C, h, w), got {values.shape}")
        mean, std = self._per_channel(values.shape[0])
        return ((values - mean) / std).astype(np.float32)

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalise` for a network output ``(C, H, W)``: float64."""
        if not isinstance(values, np.ndarray):
            raise ArgumentTypeError(f"expected an array (C, H, W), got {type(values).__name__}")
        if values.ndim != 3:
            raise ValueError(f"expected a field (C, H, W), got {values.shape}")
        mean, std = self._per_channel(values.shape[0])
        return values.astype(np.float64) * std + mean

    def to_json(self) -> str:
        """The metadata/file form: ``{"version": 1, "variables": [{name, units, mean, std}],
        "grid": ...}``."""
        entries = [
            {"name": n, "units": u, "mean": float(m), "std": float(s)}
            for n, u, m, s in zip(self.variables, self.units, self.mean, self.std, strict=True)
        ]
        body = {"version": _STATS_VERSION, "variables": entries, "grid": self.grid}
        return json.dumps(body, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FieldStats:
        """Parse :meth:`to_json`'s form.

        Raises:
            ValueError: not JSON, another version, missing or mistyped entries, a non-finite
                mean or std, std ≤ 0.
        """
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"field statistics are not JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("version") != _STATS_VERSION:
            raise ValueError(
                f"field statistics must be a JSON object with version {_STATS_VERSION}"
            )
        entries = body.get("variables")
        if not isinstance(entries, list) or not entries:
            raise ValueError("field statistics need a non-empty 'variables' list")
        keys = ("name", "units", "mean", "std")
        for e in entries:
            if not isinstance(e, dict) or any(k not in e for k in keys):
                raise ValueError(f"each field statistics entry needs {keys}, got {e!r}")
            for k in ("mean", "std"):  # bool is an int in Python: not a statistic
                if isinstance(e[k], bool) or not isinstance(e[k], (int, float)):
                    raise ValueError(f"field statistics: {k} must be a number, got {e[k]!r}")
        try:
            return cls(
                tuple(e["name"] for e in entries),
                tuple(e["units"] for e in entries),
                tuple(float(e["mean"]) for e in entries),
                tuple(float(e["std"]) for e in entries),
                body.get("grid", ""),
            )
        except TypeError as exc:  # a file holding the wrong thing is bad data, not a bad call
            raise ValueError(str(exc)) from None


def stats_metadata(stats: FieldStats) -> dict[str, str]:
    """The ``metadata`` entry of :func:`metasr.checkpoints.save_checkpoint` that stores ``stats``.

    Raises:
        TypeError: ``stats`` is not a :class:`FieldStats`.
    """
    if not isinstance(stats, FieldStats):
        raise ArgumentTypeError(f"stats must be a FieldStats, got {type(stats).__name__}")
    return {STATS_KEY: stats.to_json()}


def stats_from_metadata(
    metadata: Mapping[str, str], where: str, in_channels: int | None
) -> FieldStats | None:
    """The :class:`FieldStats` of a checkpoint's ``metadata`` (``None`` without an entry).

    Args:
        metadata: the checkpoint's metadata entries.
        where: the file or model named in errors.
        in_channels: the network's input channels (checked against the variable count), or
            ``None`` to skip that check.

    Raises:
        ValueError: the entry is corrupt, or counts another number of variables than
            ``in_channels``.
    """
    if STATS_KEY not in metadata:
        return None
    try:
        stats = FieldStats.from_json(metadata[STATS_KEY])
    except ValueError as exc:
        raise ValueError(f"{where}: corrupt '{STATS_KEY}' metadata: {exc}") from None
    if in_channels is not None and len(stats.variables) != in_channels:
        raise ValueError(
            f"{where}: statistics for {len(stats.variables)} variable(s) "
            f"({', '.join(stats.variables)}) but the network takes {in_channels} channels"
        )
    return stats
