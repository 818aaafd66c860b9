"""Meta-SR networks (plain ``nn.Module``s) and a small timm-like registry.

    >>> import metasr
    >>> metasr.list_models()
    ['meta_edsr', 'meta_edsr_tiny', 'meta_rdn', 'meta_swinir']
    >>> model = metasr.create_model("meta_edsr", in_channels=1, out_channels=1, img_range=1.0)
    >>> y = model(x, scale=(2.5, 3.0))          # or scale=3.7, or size=(721, 1440)

Every model has ``forward(x, scale=None, size=None, region=None)`` (any scale ≥ 1 per axis,
asymmetric, or an explicit output size; ``region`` computes one part of a whole image's output,
for tiled inference), configurable input/output channels, a ``backend`` for its Meta-Upscale
head, and ``bicubic_residual`` (off by default) that adds ``bicubic(x)`` to the output. The
base classes are in :mod:`metasr.archs.base`, the Swin blocks in :mod:`metasr.archs.swin_blocks`.

Value range and mean (each model follows the code its weights come from):

* :class:`MetaRDN`, :class:`MetaEDSR` (Meta-SR/EDSR-PyTorch ``MeanShift``): inputs in
  ``[0, img_range]`` (``img_range=255`` by default, as the official checkpoints); the network
  subtracts ``img_range · mean`` and adds it back at the end; outputs are in the same range.
* :class:`MetaSwinIR` (SwinIR/BasicSR): inputs in ``[0, 1]``; the network works on
  ``(x − mean) · img_range`` (``img_range=1`` by default) and returns ``y / img_range + mean``.

``mean`` (in ``[0, 1]`` units) defaults to the DIV2K RGB mean for 3 channels and 0 for other
channel counts, so 1-channel gridded data is not shifted unless asked to.
"""

from __future__ import annotations

from ._registry import ModelEntry, create_model, list_models, model_entry, register_model
from .meta_edsr import MetaEDSR
from .meta_rdn import MetaRDN, load_official_metardn
from .meta_swinir import MetaSwinIR

__all__ = [
    "MetaEDSR",
    "MetaRDN",
    "MetaSwinIR",
    "ModelEntry",
    "create_model",
    "list_models",
    "load_official_metardn",
    "model_entry",
    "register_model",
]
