"""A field model's card: what it was trained on and what it covers, stored in the checkpoint.

The card is JSON under the checkpoint metadata key :data:`CARD_KEY`. It says which sources
trained the model (and which were held out), the variable and units, the ratio range, the
layouts covered, the normalisation and the constraint. :func:`card_warnings` compares an input
with it: ``metasr upscale`` prints one line per finding, and ``--strict`` refuses instead;
``metasr info --model NAME`` prints :meth:`ModelCard.describe`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checkpoints import LoadedModel
    from .grids import Grid

__all__ = ["CARD_KEY", "NORMALISATIONS", "ModelCard", "card_warnings", "check_input", "model_card"]

#: Checkpoint metadata entry holding a :class:`ModelCard` as JSON.
CARD_KEY = "model_card"
_CARD_VERSION = 1
#: Values of :attr:`ModelCard.normalisation`.
NORMALISATIONS = ("per-sample", "dataset")
_LAYOUTS = ("global", "regional", "pole-rows", "no-pole-rows", "gaussian", "masked")


@dataclass(frozen=True)
class ModelCard:
    """What a field model covers.

    Attributes:
        variable: the physical quantity (``"air_temperature"``).
        units: units of input and output (``"K"``).
        sources: training sources, ``{"name", "variable", "units", "fields"}`` each.
        held_out: sources (or members) never seen in training, scored in docs/climate.md.
        ratio_min, ratio_max: the per-axis ratios trained.
        layouts: layouts trained, from ``global``, ``regional``, ``pole-rows``,
            ``no-pole-rows``, ``gaussian``, ``masked`` (storage order never matters:
            :mod:`metasr.climate.layout`).
        normalisation: ``"per-sample"`` (each field by its own area-weighted mean and std) or
            ``"dataset"`` (the checkpoint's ``field_stats``).
        constraint: ``"smooth"`` (the conservation constraint with its correction spread by
            bicubic interpolation), ``"min-change"`` (the area-weighted minimum change) or
            ``"none"`` (:mod:`metasr.climate.constraint`).
        training: free-form facts (iterations, time, machine).
    """

    variable: str
    units: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    ratio_min: float = 1.0
    ratio_max: float = 10.0
    layouts: list[str] = field(default_factory=list)
    normalisation: str = "per-sample"
    constraint: str = "smooth"
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"model card: normalisation must be one of {NORMALISATIONS}, "
                f"got {self.normalisation!r}"
            )
        if self.constraint not in ("smooth", "min-change", "none"):
            raise ValueError(
                "model card: constraint must be 'smooth', 'min-change' or 'none', got "
                f"{self.constraint!r}"
            )
        bad = [x for x in self.layouts if x not in _LAYOUTS]
        if bad:
            raise ValueError(f"model card: unknown layouts {bad}; known: {_LAYOUTS}")
        if not (1.0 <= self.ratio_min <= self.ratio_max):
            raise ValueError(
                "model card: need 1 <= ratio_min <= ratio_max, got "
                f"{self.ratio_min}, {self.ratio_max}"
            )

    def to_json(self) -> str:
        """The metadata form (JSON object with ``version``)."""
        return json.dumps({"version": _CARD_VERSION, **asdict(self)}, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse :meth:`to_json`'s form.

        Raises:
            ValueError: not JSON, another version, unknown or mistyped entries.
        """
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"model card is not JSON ({exc})") from None
        if not isinstance(body, dict) or body.pop("version", None) != _CARD_VERSION:
            raise ValueError(f"model card must be a JSON object with version {_CARD_VERSION}")
        try:
            return cls(**body)
        except TypeError as exc:
            raise ValueError(f"model card: {exc}") from None

    def metadata(self) -> dict[str, str]:
        """The checkpoint metadata entry that stores this card."""
        return {CARD_KEY: self.to_json()}

    def summary(self) -> str:
        """One line for netCDF attributes and logs."""
        names = ", ".join(s.get("name", "?") for s in self.sources)
        return (
            f"{self.variable} [{self.units}]; trained on {names}; ratios "
            f"x{self.ratio_min:g}..x{self.ratio_max:g}; layouts {', '.join(self.layouts)}; "
            f"normalisation {self.normalisation}; constraint {self.constraint}"
        )

    def describe(self) -> str:
        """Several lines for ``metasr info --model``."""
        lines = [
            f"variable: {self.variable} ({self.units})",
            "training sources:",
            *(
                f"  - {s.get('name')}: {s.get('variable', '?')} ({s.get('units', '?')}), "
                f"{s.get('fields', '?')} fields"
                for s in self.sources
            ),
            f"held out: {', '.join(self.held_out) or 'none'}",
            f"ratios per axis: x{self.ratio_min:g} .. x{self.ratio_max:g}",
            f"layouts: {', '.join(self.layouts)} (any storage order)",
            f"normalisation: {self.normalisation}",
            f"constraint: {self.constraint}",
        ]
        if self.training:
            lines.append("training: " + ", ".join(f"{k}={v}" for k, v in self.training.items()))
        return "\n".join(lines)


def model_card(loaded: LoadedModel | Mapping[str, str]) -> ModelCard | None:
    """The card stored with a loaded model (or in a metadata mapping), or ``None``.

    Raises:
        ValueError: a corrupt card entry.
    """
    meta = loaded if isinstance(loaded, Mapping) else loaded.metadata
    if CARD_KEY not in meta:
        return None
    return ModelCard.from_json(meta[CARD_KEY])


def card_warnings(
    card: ModelCard, src: Grid, dst: Grid, units: str | None, masked: bool
) -> list[str]:
    """Where an input lies outside what ``card`` covers, one sentence each (empty: covered).

    Checked: the ratio on either axis beyond the trained range, a regional source for a model
    trained on global fields only, missing values for a model trained on complete fields, a
    Gaussian or pole-row layout not trained, and units other than the card's.
    """
    out = []
    r_v = dst.shape[0] / src.shape[0]
    r_h = dst.shape[1] / src.shape[1]
    for axis, r in (("vertical", r_v), ("horizontal", r_h)):
        if r > card.ratio_max * 1.001 or r < card.ratio_min / 1.001:
            out.append(
                f"{axis} ratio x{r:.3g} is outside the trained "
                f"x{card.ratio_min:g}..x{card.ratio_max:g}"
            )
    if not src.periodic_lon and "regional" not in card.layouts:
        out.append("the source is regional but the model was trained on global fields only")
    if masked and "masked" not in card.layouts:
        out.append("the source has missing values but the model was trained on complete fields")
    if src.has_pole_rows and "pole-rows" not in card.layouts:
        out.append("the source has pole rows, a layout the model was not trained on")
    if units is not None and card.units and units != card.units:
        out.append(f"the field is in {units!r}, the model in {card.units!r}")
    return out


def check_input(
    card: ModelCard, src: Grid, dst: Grid, units: str | None, masked: bool, *, strict: bool
) -> tuple[float, list[str]]:
    """What ``metasr upscale`` does with an input before a carded model runs.

    A field in °C for a temperature model in K is converted (an offset of +273.15, said in a
    warning); other units the card does not cover are refused.

    Args:
        card: the model's card.
        src, dst: the input's and the target's grid.
        units: the input's ``units`` attribute (``None``: none).
        masked: whether the input has missing values.
        strict: refuse (``ValueError``) instead of warning when the input lies outside the card.

    Returns:
        ``(offset, warnings)``: the offset to add to the input (0 or 273.15) and the warning
        lines to print.

    Raises:
        ValueError: units that cannot be converted, or anything outside the card with
            ``strict``.
    """
    from .stats import same_units

    offset = 0.0
    if units is not None and card.units and not same_units(units, card.units):
        if (
            "temperature" in card.variable
            and same_units(card.units, "K")
            and same_units(units, "degC")
        ):
            offset = 273.15
        else:
            raise ValueError(
                f"the field is in {units!r} but the model's card says {card.units!r}; convert "
                "it first (only degrees Celsius are converted, for temperature models)"
            )
    msgs = card_warnings(card, src, dst, None, masked)
    if offset:
        msgs.append(f"the field is in {units!r}: converted to {card.units} (+273.15)")
    if strict and msgs:
        raise ValueError("outside the model card (--strict): " + "; ".join(msgs))
    return offset, msgs
