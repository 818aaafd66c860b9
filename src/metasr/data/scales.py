"""Scale factors for training and evaluation: distributions, parsing, labels.

A scale is always a pair ``(r_v, r_h)`` (vertical, horizontal) of floats ≥ 1.

**Scale grammar** (the one written form, wherever a scale is typed: ``metasr upscale --scale``,
``metasr eval --scales``, option files, scripts):

* one scale is ``R`` (both axes, ``2``, ``2.5``, ``1e1``) or ``RVxRH`` (vertical × horizontal,
  ``3.5x2``; ``x``, ``X``, ``×`` or ``*`` separate the factors): :func:`parse_scale_spec`;
* a list of scales separates them with commas, so ``"2,3,1.5x4"`` is ×2, ×3 and 1.5×4 and
  ``"3.5,2"`` is always *two* scales (×3.5 and ×2), never a pair: :func:`parse_scale_list`;
* a scale spec never means a size. Sizes are integer ``HxW`` (``721x1440``) and are only accepted
  by options that take a size (``--size`` of ``metasr upscale``: the output; ``--lq-size`` of
  ``metasr eval``: the LR), parsed by :func:`parse_size_spec` / :func:`parse_size_list`;
* bad input raises ``ValueError`` naming the offending item.

A training batch shares one pair, drawn from a :class:`ScaleSampler`; option files describe
samplers as dicts (:func:`build_scale_sampler`):

``{type: grid, min: 1.1, max: 4.0, step: 0.1}``
    Meta-SR's recipe: one of ×1.1, ×1.2, …, ×4.0, the same on both axes. ``symmetric: false``
    draws the two axes independently from the grid; ``p_symmetric: 0.5`` mixes both.
``{type: uniform, min: 1.1, max: 4.0, symmetric: false}``
    continuous uniform; ``min``/``max`` may be pairs (per-axis ranges); ``p_symmetric`` as above.
``{type: choice, scales: [2, 3, [1.5, 4], [3.5, 2]], weights: [...]}``
    a list of scales (numbers or ``[r_v, r_h]`` pairs), uniformly or with weights.
``{type: mixture, samplers: [{type: uniform, ...}, {...}], weights: [0.95, 0.05]}``
    each batch draws one of the listed samplers (uniformly or with ``weights``), then its scale:
    e.g. mostly ×1.1…×4 with an occasional larger one.
``{type: fixed, scale: [7.5104166667, 10]}`` or ``{type: fixed, lq_size: [96, 144],
gt_size: [721, 1440]}``
    one pair, e.g. the 96×144 → 721×1440 climate setting (``r = gt/lq`` per axis).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..geometry import UpscaleRequest, parse_scale, resolve_output_size

__all__ = [
    "ARBSR_ASYMMETRIC_SCALES",
    "ChoiceScales",
    "FixedScale",
    "GridScales",
    "META_SR_SCALES",
    "MixtureScales",
    "Scale",
    "ScaleSampler",
    "UniformScales",
    "build_scale_sampler",
    "format_scale",
    "lq_size_for",
    "parse_request",
    "parse_scale_list",
    "parse_scale_spec",
    "parse_size_list",
    "parse_size_spec",
    "to_scale",
]

Scale = tuple[float, float]

#: Meta-SR's training and test scales: ×1.1 … ×4.0 in steps of 0.1 (symmetric).
META_SR_SCALES: tuple[float, ...] = tuple(round(1.0 + 0.1 * k, 1) for k in range(1, 31))

#: Standard asymmetric test pairs of ArbSR/SAVSR, ``(r_v, r_h)`` (docs/design.md §5).
ARBSR_ASYMMETRIC_SCALES: tuple[Scale, ...] = (
    (1.5, 4.0),
    (2.0, 4.0),
    (2.0, 3.75),
    (1.5, 3.5),
    (1.6, 3.05),
    (1.7, 3.75),
    (2.95, 3.75),
    (3.9, 2.0),
    (3.5, 1.5),
    (3.5, 2.0),
    (3.5, 1.75),
    (4.0, 1.4),
)


_NUMBER = r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_TIMES = "[xX×*]"
_SCALE_SPEC = re.compile(f"{_NUMBER}(?:{_TIMES}{_NUMBER})?")
_SIZE_SPEC = re.compile(rf"\s*(\d+)\s*{_TIMES}\s*(\d+)\s*")


def parse_scale_spec(text: str) -> Scale:
    """Parse one scale: ``"2.5"`` → ``(2.5, 2.5)``, ``"3.5x2"`` → ``(3.5, 2.0)``.

    See the module docstring for the grammar; a comma separates two scales, so ``"3.5,2"`` is
    not one scale.

    Raises:
        ValueError: ``text`` is not one scale, or a factor is below 1 or not finite.
    """
    nums = _parse_factors(text)
    return parse_scale(nums[0] if len(nums) == 1 else (nums[0], nums[1]))


def _parse_factors(text: str) -> list[float]:
    m = _SCALE_SPEC.fullmatch(text)
    if m is None:
        raise ValueError(
            f"bad scale {text.strip()!r}: use a number (2.5) or VERTICALxHORIZONTAL (3.5x2)"
        )
    return [float(g) for g in m.groups() if g is not None]


def parse_scale_list(text: str) -> list[Scale]:
    """Parse comma-separated scales: ``"2,3,1.5x4"`` → ``[(2, 2), (3, 3), (1.5, 4)]``.

    Each item follows :func:`parse_scale_spec`; empty items are skipped.

    Raises:
        ValueError: an item is not a scale (the message names it), or there is none.
    """
    scales = [parse_scale_spec(item) for item in text.split(",") if item.strip()]
    if not scales:
        raise ValueError(f"no scale in {text!r}")
    return scales


def parse_size_spec(text: str) -> tuple[int, int]:
    """Parse one size: ``"721x1440"`` → ``(721, 1440)`` (height × width, positive integers).

    Raises:
        ValueError: ``text`` is not ``HxW`` with positive integers.
    """
    m = _SIZE_SPEC.fullmatch(text)
    if m is None or min(int(m.group(1)), int(m.group(2))) < 1:
        raise ValueError(
            f"bad size {text.strip()!r}: use HEIGHTxWIDTH with positive integers (721x1440)"
        )
    return int(m.group(1)), int(m.group(2))


def parse_request(scale: object = None, size: object = None) -> UpscaleRequest:
    """``scale`` or ``size`` as one :class:`~metasr.geometry.UpscaleRequest`: strings in the
    grammar above (``"3.5x2"``: :func:`parse_scale_spec`; ``"721x1440"``:
    :func:`parse_size_spec`), or the values the request takes (a number, ``(r_v, r_h)``,
    ``(H, W)``).

    Raises:
        ValueError: a bad spec or request (both or neither given).
    """
    if isinstance(scale, str):
        scale = parse_scale_spec(scale)
    if isinstance(size, str):
        size = parse_size_spec(size)
    return UpscaleRequest(scale=scale, size=size)


def parse_size_list(text: str) -> list[tuple[int, int]]:
    """Parse comma-separated sizes: ``"96x144,48x72"`` → ``[(96, 144), (48, 72)]``.

    Raises:
        ValueError: an item is not a size, or there is none.
    """
    sizes = [parse_size_spec(item) for item in text.split(",") if item.strip()]
    if not sizes:
        raise ValueError(f"no size in {text!r}")
    return sizes


def to_scale(value: object) -> Scale:
    """A number, ``[r_v, r_h]`` or one scale spec (``"1.5x4"``) → validated ``(r_v, r_h)``."""
    if isinstance(value, str):
        return parse_scale_spec(value)
    return parse_scale(tuple(value) if isinstance(value, list) else value)


def format_scale(scale: Scale) -> str:
    """Short label: ``"2"`` for ``(2, 2)``, ``"1.5x4"`` for ``(1.5, 4)``; inverse of parsing."""
    r_v, r_h = scale
    if r_v == r_h:
        return f"{r_v:g}"
    return f"{r_v:g}x{r_h:g}"


def lq_size_for(gt_h: int, gt_w: int, scale: Scale) -> tuple[int, int, int, int]:
    """LR and (cropped) HR sizes of a whole image evaluated at ``scale``.

    The LR has ``h = floor(H/r_v)`` rows (likewise columns) and the model then produces
    ``floor(h·r_v)`` rows (:func:`metasr.resolve_output_size`), never more than ``H``; the HR is
    cropped to that many rows so that output and ground truth align pixel for pixel.

    Returns:
        ``(h, w, H_crop, W_crop)``.
    """
    r_v, r_h = scale
    h = math.floor(gt_h / r_v + 1e-6)
    w = math.floor(gt_w / r_h + 1e-6)
    if h < 1 or w < 1:
        raise ValueError(
            f"a {gt_h}x{gt_w} image is too small for scale {format_scale(scale)} (LR would be "
            f"{h}x{w})"
        )
    H, W, _, _ = resolve_output_size(h, w, scale=scale)
    return h, w, H, W


class ScaleSampler:
    """Draws one ``(r_v, r_h)`` per batch. Subclasses implement :meth:`sample`."""

    def sample(self, rng: random.Random | None = None) -> Scale:
        """One scale pair, using ``rng`` (default: the ``random`` module's global state)."""
        raise NotImplementedError

    @property
    def max_scale(self) -> Scale:
        """The largest ``(r_v, r_h)`` this sampler can return (sizes HR crops)."""
        raise NotImplementedError


def _check_probability(value: object, name: str) -> None:
    """Refuse a probability outside 0..1 (``p_symmetric: 2.0`` would pass silently)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


def _mix_symmetric(rng, p_symmetric: float) -> bool:
    return p_symmetric >= 1.0 or (p_symmetric > 0.0 and rng.random() < p_symmetric)


@dataclass
class GridScales(ScaleSampler):
    """Scales on a grid ``min, min+step, …, max`` (Meta-SR: 1.1 … 4.0 step 0.1).

    Attributes:
        p_symmetric: probability that a batch has ``r_v == r_h`` (1 = always, Meta-SR);
            otherwise both axes are drawn independently.
    """

    min: float = 1.1
    max: float = 4.0
    step: float = 0.1
    p_symmetric: float = 1.0
    values: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_probability(self.p_symmetric, "p_symmetric")
        if self.step <= 0:
            raise ValueError(f"grid step must be > 0, got {self.step}")
        parse_scale((self.min, self.max))
        if self.max < self.min:
            raise ValueError(f"grid max {self.max} is below min {self.min}")
        n = math.floor((self.max - self.min) / self.step + 1e-6)
        # Round so that 1.1 + 2·0.1 is 1.3, not 1.3000000000000003 (labels, crop sizes).
        self.values = tuple(round(self.min + k * self.step, 10) for k in range(n + 1))

    def sample(self, rng: random.Random | None = None) -> Scale:
        rng = rng or random
        r = rng.choice(self.values)
        if _mix_symmetric(rng, self.p_symmetric):
            return r, r
        return r, rng.choice(self.values)

    @property
    def max_scale(self) -> Scale:
        return self.values[-1], self.values[-1]


@dataclass
class UniformScales(ScaleSampler):
    """Continuous uniform scales; ``min``/``max`` are numbers or per-axis pairs."""

    min: float | tuple[float, float] = 1.1
    max: float | tuple[float, float] = 4.0
    p_symmetric: float = 1.0

    def __post_init__(self) -> None:
        _check_probability(self.p_symmetric, "p_symmetric")
        self._lo = to_scale(self.min)
        self._hi = to_scale(self.max)
        if self._hi[0] < self._lo[0] or self._hi[1] < self._lo[1]:
            raise ValueError(f"uniform scale max {self.max} is below min {self.min}")

    def sample(self, rng: random.Random | None = None) -> Scale:
        rng = rng or random
        if _mix_symmetric(rng, self.p_symmetric):
            # The symmetric draw must lie in both axes' ranges.
            lo, hi = max(self._lo), min(self._hi)
            if lo > hi:
                raise ValueError(
                    f"symmetric scales need overlapping ranges, got {self._lo}..{self._hi}"
                )
            r = rng.uniform(lo, hi)
            return r, r
        return rng.uniform(self._lo[0], self._hi[0]), rng.uniform(self._lo[1], self._hi[1])

    @property
    def max_scale(self) -> Scale:
        return self._hi


@dataclass
class ChoiceScales(ScaleSampler):
    """One of a list of scales (numbers or ``(r_v, r_h)`` pairs), optionally weighted."""

    scales: Sequence[object] = ()
    weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        self._scales = [to_scale(s) for s in self.scales]
        if not self._scales:
            raise ValueError("scale choice needs a non-empty 'scales' list")
        if self.weights is not None:
            if len(self.weights) != len(self._scales) or min(self.weights) < 0:
                raise ValueError("scale 'weights' must be non-negative, one per scale")
            if sum(self.weights) <= 0:
                raise ValueError("scale 'weights' must not all be zero")

    def sample(self, rng: random.Random | None = None) -> Scale:
        rng = rng or random
        if self.weights is None:
            return rng.choice(self._scales)
        return rng.choices(self._scales, weights=list(self.weights), k=1)[0]

    @property
    def max_scale(self) -> Scale:
        return max(s[0] for s in self._scales), max(s[1] for s in self._scales)


@dataclass
class FixedScale(ScaleSampler):
    """Always the same pair, given as ``scale`` or as ``lq_size``/``gt_size`` (``r = gt/lq``)."""

    scale: object = None
    lq_size: Sequence[int] | None = None
    gt_size: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.scale is not None:
            if self.lq_size is not None or self.gt_size is not None:
                raise ValueError("fixed scale: give 'scale' or 'lq_size' + 'gt_size', not both")
            self._scale = to_scale(self.scale)
        elif self.lq_size is not None and self.gt_size is not None:
            h, w = (int(v) for v in self.lq_size)
            _, _, r_v, r_h = resolve_output_size(h, w, size=tuple(int(v) for v in self.gt_size))
            self._scale = (r_v, r_h)
        else:
            raise ValueError("fixed scale needs 'scale' or both 'lq_size' and 'gt_size'")

    def sample(self, rng: random.Random | None = None) -> Scale:
        return self._scale

    @property
    def max_scale(self) -> Scale:
        return self._scale


@dataclass
class MixtureScales(ScaleSampler):
    """Each draw picks one of ``samplers`` (uniformly or by ``weights``) and returns its scale.

    ``samplers`` are :class:`ScaleSampler` objects or option dicts (:func:`build_scale_sampler`);
    the usual mix is a main range plus a rarely drawn one of larger scales.
    """

    samplers: Sequence[object] = ()
    weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        self._samplers = [build_scale_sampler(s) for s in self.samplers]
        if not self._samplers:
            raise ValueError("scale mixture needs a non-empty 'samplers' list")
        if self.weights is not None:
            if len(self.weights) != len(self._samplers) or min(self.weights) < 0:
                raise ValueError("mixture 'weights' must be non-negative, one per sampler")
            if sum(self.weights) <= 0:
                raise ValueError("mixture 'weights' must not all be zero")

    def sample(self, rng: random.Random | None = None) -> Scale:
        rng = rng or random
        if self.weights is None:
            part = rng.choice(self._samplers)
        else:
            part = rng.choices(self._samplers, weights=list(self.weights), k=1)[0]
        return part.sample(rng)

    @property
    def max_scale(self) -> Scale:
        tops = [s.max_scale for s in self._samplers]
        return max(t[0] for t in tops), max(t[1] for t in tops)


_SAMPLERS: dict[str, type[ScaleSampler]] = {
    "grid": GridScales,
    "uniform": UniformScales,
    "choice": ChoiceScales,
    "fixed": FixedScale,
    "mixture": MixtureScales,
}


def build_scale_sampler(spec: object) -> ScaleSampler:
    """A :class:`ScaleSampler` from an option value.

    ``spec`` is a sampler, a dict with ``type`` (``grid``/``uniform``/``choice``/``fixed``/
    ``mixture``) and
    that type's fields, a number or pair (fixed), a list of scales (choice), or a string such as
    ``"2,3,1.5x4"`` (choice).
    """
    if isinstance(spec, ScaleSampler):
        return spec
    if isinstance(spec, Mapping):
        opts = dict(spec)
        kind = opts.pop("type", None)
        if kind not in _SAMPLERS:
            raise ValueError(f"scale sampler type must be one of {sorted(_SAMPLERS)}, got {kind!r}")
        if "symmetric" in opts:  # friendlier spelling of p_symmetric = 1 / 0
            opts.setdefault("p_symmetric", 1.0 if opts.pop("symmetric") else 0.0)
        for key in ("min", "max", "scale"):
            if isinstance(opts.get(key), list):
                opts[key] = tuple(opts[key])
        try:
            return _SAMPLERS[kind](**opts)
        except TypeError as exc:  # unknown field
            raise ValueError(f"bad options for scale sampler {kind!r}: {exc}") from None
    if isinstance(spec, str):
        return ChoiceScales(parse_scale_list(spec))
    if isinstance(spec, (list, tuple)):
        # Always a list of scales: [2, 3] is ×2 or ×3; one asymmetric pair is [[1.5, 4]].
        return ChoiceScales(list(spec))
    return FixedScale(scale=spec)
