"""Meta-SwinIR: the SwinIR backbone (Liang et al., 2021) with a Meta-Upscale head.

The head replaces SwinIR's classical-SR ``pixelshuffle`` reconstruction::

    conv_first → RSTB × len(depths) → norm → conv_after_body (+ shallow residual)
    → conv_before_upsample (Conv + LeakyReLU, num_feat) → MetaUpsample (``upsample.phi.*``)

instead of ``Upsample`` + ``conv_last``. Backbone parameter and buffer names are SwinIR's
(``conv_first``, ``patch_embed.norm``, ``layers.{i}.residual_group.blocks.{j}.{norm1,attn,norm2,
mlp}``, ``layers.{i}.conv``, ``norm``, ``conv_after_body``, ``conv_before_upsample.0``), so a
classical SwinIR checkpoint loads with ``strict=False`` and reports only the upsampler
(``upsample.*``, ``conv_last.*``) as missing/unexpected. The derived buffers
``relative_position_index`` and ``attn_mask`` are recomputed rather than loaded, so a checkpoint
trained at another ``img_size`` loads too.

Input convention (SwinIR/BasicSR): values in ``[0, 1]``; the network works on
``(x − mean) · img_range`` and returns ``y / img_range + mean``. ``mean`` defaults to the DIV2K
RGB mean for 3 channels and 0 otherwise (SwinIR's rule); it is not part of the state_dict.

Any input size works: the input is reflect-padded to a multiple of the window size, and the
head runs on the features cropped back to the input size, so the output has exactly the
requested size.

With ``periodic_lon=True`` (global lat/lon fields) the width is a circle: the convolutions wrap
along it, the shifted windows attend across the seam (the cyclic shift along the width is then
exact; only latitude is masked), and the width is not padded: it must be a multiple of the
effective window, because padding columns would break the circle (a padded map wraps with the
wrong period). The backbone is then equivariant to rolls of the input by multiples of the
window; a roll by other amounts moves the window partition relative to the content, so the
features change (as they do for any Swin model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import CoordinateGrid, Region, UpscaleRequest
from ..modules import HeadConfig
from ..validation import (
    ArgumentTypeError,
    check_positive_float,
    check_positive_int,
    check_positive_ints,
    is_real,
)
from ._registry import register_model
from .base import MetaSRNet, resolve_mean
from .swin_blocks import RSTB, PatchEmbed, resi_conv, shift_attn_mask

__all__ = ["MetaSwinIR"]


def _pair(v: object, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (H, W), got {v!r}")
        return check_positive_int(name, v[0]), check_positive_int(name, v[1])
    n = check_positive_int(name, v)
    return n, n


@register_model(
    "meta_swinir",
    img_size=48,
    window_size=8,
    embed_dim=180,
    depths=(6, 6, 6, 6, 6, 6),
    num_heads=(6, 6, 6, 6, 6, 6),
    mlp_ratio=2.0,
    img_range=1.0,
    resi_connection="1conv",
)
class MetaSwinIR(MetaSRNet):
    """SwinIR backbone + Meta-Upscale head, any scale per axis or explicit output size.

    Registered as ``"meta_swinir"`` with SwinIR's classical-SR "M" configuration (embed_dim
    180, 6 RSTBs of depth 6, 6 heads, window 8, mlp_ratio 2, img_size 48). The constructor's own
    defaults are SwinIR's. The climate seed configuration is ``in_chans=1, img_size=(96, 144),
    embed_dim=156, depths=[6]*6, num_heads=[6]*6, window_size=8, mlp_ratio=2``, called with
    ``size=(721, 1440)``.

    Args:
        img_size: training input size (int or ``(H, W)``); sets the precomputed shifted-window
            masks and, as in SwinIR, shrinks the window if it is not smaller than this.
        patch_size: must be 1 (SwinIR's image-restoration models never patchify).
        in_chans: input channels, 3 if not given (``in_channels`` is an alias).
        out_chans: output channels; defaults to ``in_chans`` (``out_channels`` is an alias).
        embed_dim: transformer width.
        depths: Swin blocks per RSTB.
        num_heads: attention heads per RSTB; each must divide ``embed_dim``.
        window_size: attention window.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: bias in the qkv projection.
        qk_scale: overrides ``head_dim ** -0.5``.
        drop_rate, attn_drop_rate: dropout rates.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        ape: absolute position embedding (only for inputs of exactly ``img_size``).
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: recompute each Swin block in backward (less memory, ~30% slower).
        img_range: the network sees ``(x − mean) · img_range`` (SwinIR: 1.0 or 255).
        resi_connection: ``"1conv"`` or ``"3conv"``.
        num_feat: channels of ``conv_before_upsample`` fed to the head (64 in SwinIR).
        mean: per-channel mean; ``None``: DIV2K RGB mean for 3 channels, else 0.
        upsample: the Meta-Upscale head's options (:class:`metasr.HeadConfig`, or a mapping of
            its fields; default: the paper's head; ``backend`` is settable later as
            ``model.backend``). Option files and checkpoint metadata may spell them flat
            (``hidden``, ``meta_kernel_size``, ...: :func:`metasr.modules.fold_head_options`).
        bicubic_residual: add ``bicubic(x)`` to the output; the head's last layer starts ×0.1.
        periodic_lon: periodic in longitude (the width): convolutions, shifted windows, the
            bicubic residual and the head's window wrap along the width, whose size must then
            be a multiple of the effective window. State_dict keys are unchanged.

    Shape:
        forward: ``x (N, in_chans, h, w)`` → ``(N, out_chans, H, W)``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 64,
        patch_size: int = 1,
        in_chans: int | None = None,
        out_chans: int | None = None,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        img_range: float = 1.0,
        resi_connection: str = "1conv",
        num_feat: int = 64,
        mean: float | Sequence[float] | None = None,
        upsample: HeadConfig | Mapping[str, Any] | None = None,
        bicubic_residual: bool = False,
        periodic_lon: bool = False,
        in_channels: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels is not None:
            if in_chans is not None and in_chans != in_channels:
                raise ValueError(f"in_chans={in_chans} and in_channels={in_channels} disagree")
            in_chans = in_channels
        in_chans = 3 if in_chans is None else in_chans
        if out_channels is not None:
            if out_chans is not None and out_chans != out_channels:
                raise ValueError(f"out_chans={out_chans} and out_channels={out_channels} disagree")
            out_chans = out_channels
        in_chans = check_positive_int("in_chans", in_chans)
        out_chans = in_chans if out_chans is None else check_positive_int("out_chans", out_chans)
        head = self._init_meta_options(
            in_chans, out_chans, upsample, bicubic_residual, periodic_lon
        )

        if patch_size != 1:
            raise ValueError(f"patch_size must be 1 (as in SwinIR's SR models), got {patch_size!r}")
        self.img_size = _pair(img_size, "img_size")
        embed_dim = check_positive_int("embed_dim", embed_dim)
        window_size = check_positive_int("window_size", window_size)
        depths = check_positive_ints("depths", depths)
        num_heads = check_positive_ints("num_heads", num_heads)
        if not depths or len(depths) != len(num_heads):
            raise ValueError(
                f"depths and num_heads must be non-empty and of equal length, got {depths} and "
                f"{num_heads}"
            )
        bad = [h for h in num_heads if embed_dim % h]
        if bad:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads {bad}")
        if resi_connection not in ("1conv", "3conv"):
            raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
        if resi_connection == "3conv" and embed_dim < 4:
            raise ValueError(f"resi_connection='3conv' needs embed_dim >= 4, got {embed_dim}")
        mlp_ratio = check_positive_float("mlp_ratio", mlp_ratio)
        for name, p in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if not is_real(p):
                raise ArgumentTypeError(f"{name} must be a number in [0, 1), got {p!r}")
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        self.img_range = check_positive_float("img_range", img_range)
        self.embed_dim = embed_dim
        self.window_size = window_size
        self.ape = bool(ape)
        self.num_feat = check_positive_int("num_feat", num_feat)
        # Not in the state_dict, as in SwinIR (where `mean` is a plain attribute).
        self.register_buffer(
            "mean", torch.tensor(resolve_mean(mean, in_chans, "input")).view(1, -1, 1, 1), False
        )
        self.register_buffer(
            "out_mean",
            torch.tensor(resolve_mean(mean, out_chans, "output")).view(1, -1, 1, 1),
            False,
        )

        # --- backbone (SwinIR names) ---
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        if self.ape:
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, self.img_size[0] * self.img_size[1], embed_dim)
            )
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth rising linearly over all blocks (host floats: works on "meta" too).
        n_blocks = sum(depths)
        dpr = [float(drop_path_rate) * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            start = sum(depths[:i])
            self.layers.append(
                RSTB(
                    embed_dim,
                    resi_connection,
                    input_resolution=self.img_size,
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start : start + depth],
                    use_checkpoint=use_checkpoint,
                    periodic_lon=periodic_lon,
                )
            )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = resi_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, self.num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
        )
        self.apply(_swinir_init)  # before the head exists: the head keeps PyTorch's init
        self._wrap_backbone_longitude()
        # --- head ---
        self._init_head(self.num_feat, head)

    @property
    def effective_window_size(self) -> int:
        """The window the blocks use (SwinIR shrinks it to ``min(img_size)`` if not smaller)."""
        return self.layers[0].residual_group.blocks[0].window_size

    @property
    def tile_alignment(self) -> int:
        """The effective window: a region whose window starts at a multiple of it is split into
        attention windows (plain and shifted) exactly where the whole image is."""
        return self.effective_window_size

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad ``(N, C, h, w)`` on the bottom/right to a multiple of the window size
        (replicate where the input is too small to reflect); with ``periodic_lon`` the width is
        never padded (:meth:`_check_periodic_width` ensures it needs none)."""
        ws = self.effective_window_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % ws, 0 if self.periodic_lon else (-w) % ws
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _check_periodic_width(self, x: torch.Tensor) -> None:
        """With ``periodic_lon``: refuse a width that is not a multiple of the window."""
        ws = self.effective_window_size
        if self.periodic_lon and x.shape[-1] % ws:
            raise ValueError(
                f"periodic_lon=True needs an input width that is a multiple of the window size "
                f"{ws} (padding columns would break the longitude circle), got width "
                f"{x.shape[-1]}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Transformer body on a window-aligned map: ``(N, C, Hp, Wp)`` → ``(N, C, Hp, Wp)``."""
        N, C, H, W = x.shape
        x_size = (H, W)
        t = self.patch_embed(x)
        if self.ape:
            if x_size != self.img_size:
                raise ValueError(
                    f"ape=True needs inputs of img_size {self.img_size} after padding, got {x_size}"
                )
            t = t + self.absolute_pos_embed
        t = self.pos_drop(t)
        # One mask for every shifted block at this size (the blocks' buffers hold img_size's).
        blk = self.layers[0].residual_group.blocks[0]
        mask = None
        if x_size != blk.mask_size and blk.window_size == self.window_size:
            ws = blk.window_size
            mask = shift_attn_mask(H, W, ws, ws // 2, self.periodic_lon).to(x.device)
        for layer in self.layers:
            t = layer(t, x_size, mask)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(N, C, H, W)

    def forward(
        self,
        x: torch.Tensor,
        scale: float | tuple[float, float] | None = None,
        size: tuple[int, int] | None = None,
        region: Region | None = None,
        coords: CoordinateGrid | None = None,
        *,
        request: UpscaleRequest | None = None,
    ) -> torch.Tensor:
        """Upscale ``x`` (values in ``[0, 1]``) by ``scale``, to ``size`` or onto ``coords``'
        target grid.

        Args:
            x: ``(N, in_chans, h, w)``, any ``h, w``; with ``region``, the region's LR window
                (starting at a multiple of :attr:`tile_alignment` to match the whole image).
            scale: a number or ``(r_v, r_h)``, each ≥ 1.
            size: ``(H, W)`` instead of ``scale``.
            region: compute only this part of the whole image's output (tiled inference);
                ``scale``/``size`` is then the whole image's request.
            coords: place the output by latitude/longitude instead of ``scale``/``size``
                (``x``'s grid is ``coords``' source grid; with ``region``, the target must be in
                the source's order). The bicubic residual is then the index-ratio bicubic to
                the target grid's shape, in the target's order.
            request: all of the above as one :class:`~metasr.geometry.UpscaleRequest`
                (tiled inference hands each tile its request), instead of them.

        Returns:
            ``(N, out_chans, H, W)``, or ``(N, out_chans, *region.out_shape)``.
        """
        head = self.plan(x, self.request(scale, size, region, coords, request=request))
        y = self.upsample(self.head_features(x), plan=head)
        y = self._add_bicubic(y, self._normalize(x), head)
        return y / self.img_range + self.out_mean.to(y.dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) · img_range``: what the backbone and the bicubic residual work on."""
        return (x - self.mean.to(x.dtype)) * self.img_range

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise, pad to whole windows, run the SwinIR backbone up to
        ``conv_before_upsample`` and crop back: ``(N, in_chans, h, w)`` → ``(N, num_feat, h, w)``.

        Raises:
            ValueError: with ``periodic_lon``, for a width that is not a multiple of the window.
        """
        self._check_periodic_width(x)
        h, w = x.shape[-2:]
        f = self.conv_first(self._pad(self._normalize(x)))
        f = self.conv_after_body(self.forward_features(f)) + f
        # Crop before the head: its geometry is that of the true input, so the output has exactly
        # the requested size (and no padded-border pixels are ever upsampled).
        return self.conv_before_upsample(f)[..., :h, :w]


def _swinir_init(m: nn.Module) -> None:
    """SwinIR's initialisation: truncated-normal linears, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
