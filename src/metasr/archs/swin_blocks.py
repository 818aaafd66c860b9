"""Generic Swin Transformer building blocks (Liu et al., 2021) as SwinIR uses them.

Window partitioning, (shifted) window attention with a relative-position bias, the Swin block,
SwinIR's ``BasicLayer`` and residual Swin Transformer block (``RSTB``), and the patch
embedding with patch size 1. Module and parameter names are SwinIR's, so SwinIR checkpoints
map onto them key for key (:class:`metasr.archs.MetaSwinIR` assembles them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

__all__ = [
    "RSTB",
    "BasicLayer",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "SwinBlock",
    "WindowAttention",
    "relative_position_index",
    "resi_conv",
    "round_up",
    "shift_attn_mask",
    "window_partition",
    "window_reverse",
]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``(B, H, W, C)`` → ``(B·H/ws·W/ws, ws·ws, C)``, windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B·nW, ws·ws, C)`` → ``(B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(ws: int) -> torch.Tensor:
    """``(ws², ws²)`` int64 index into the ``(2ws−1)²`` relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(
        1
    )  # (2, ws²)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, ws², ws²), in [0, 2ws-2]
    return rel[0] * (2 * ws - 1) + rel[1]


def shift_attn_mask(
    H: int, W: int, ws: int, shift: int, periodic_lon: bool = False
) -> torch.Tensor:
    """Additive mask ``(nW, ws², ws²)`` of shifted-window attention: −100 between tokens that
    came from different regions of the cyclically shifted map, 0 otherwise.

    With ``periodic_lon`` the width is a circle, so the cyclic shift along it brings true
    neighbours together across the seam: only the height (latitude) is cut into regions.
    """
    label = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    region = 0
    for hs in cuts:
        for wsl in (slice(None),) if periodic_lon else cuts:
            label[:, hs, wsl, :] = region
            region += 1
    lw = window_partition(label, ws).squeeze(-1)  # (nW, ws²)
    diff = lw[:, None, :] - lw[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _keep_derived_buffer(
    module: nn.Module, name: str, state_dict: dict[str, torch.Tensor], prefix: str
) -> None:
    """Make ``load_state_dict`` keep ``module``'s own value of a derived buffer.

    ``relative_position_index`` and ``attn_mask`` are functions of the window and ``img_size``,
    not learned; keeping ours lets checkpoints trained at another ``img_size`` (other mask
    shapes) load, and checkpoints that lack them load without "missing" keys.
    """
    buf = module._buffers.get(name)
    if buf is not None:
        state_dict[prefix + name] = buf


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class Mlp(nn.Module):
    """``fc1 → GELU → drop → fc2 → drop`` on tokens ``(..., C)``."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``ws×ws`` windows with a learned relative-position bias.

    Shape:
        forward: ``x (B·nW, ws², C)``, ``mask (nW, ws², ws²)`` or None → ``(B·nW, ws², C)``.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent like SwinIR's, so checkpoints have the same keys; see MetaSwinIR's loader.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(B_, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B_, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, heads, N, N) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(B_, heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _keep_derived_buffer(self, "relative_position_index", state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted) window attention and MLP, both pre-norm residual.

    As in SwinIR, a window no smaller than the training resolution ``input_resolution`` is
    shrunk to it and the shift is dropped. With ``periodic_lon`` the shifted windows are not
    masked across the width's seam (see :func:`shift_attn_mask`).

    Shape:
        forward: ``x (B, H·W, C)`` with ``x_size = (H, W)`` → ``(B, H·W, C)``.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
        periodic_lon: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.periodic_lon = periodic_lon
        if min(input_resolution) <= window_size:
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # Inputs are padded to whole windows, so the mask is precomputed for img_size rounded up
        # to a multiple of the window (equal to img_size in SwinIR, which requires that).
        self.mask_size = round_up(input_resolution, window_size)
        mask = (
            shift_attn_mask(*self.mask_size, window_size, shift_size, periodic_lon)
            if shift_size
            else None
        )
        self.register_buffer("attn_mask", mask)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _keep_derived_buffer(self, "attn_mask", state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        H, W = x_size
        B, L, C = x.shape
        ws, s = self.window_size, self.shift_size
        if s and tuple(x_size) == self.mask_size:
            mask = self.attn_mask
        elif not s:
            mask = None
        h = self.norm1(x).view(B, H, W, C)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = self.attn(window_partition(h, ws), mask=mask)
        h = window_reverse(h, ws, H, W)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(h.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows (SwinIR's ``BasicLayer``)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        use_checkpoint: bool,
        periodic_lon: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    input_resolution,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop,
                    attn_drop,
                    drop_path[i],
                    periodic_lon,
                )
                for i in range(depth)
            ]
        )

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                # Recompute the block in backward: keeps only its input, not the attention maps.
                x = checkpoint.checkpoint(blk, x, x_size, mask, use_reentrant=False)
            else:
                x = blk(x, x_size, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, a conv on the image layout, residual.

    Shape:
        forward: ``x (B, H·W, C)`` → ``(B, H·W, C)``.
    """

    def __init__(self, dim: int, resi_connection: str, **layer_kwargs: Any) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **layer_kwargs)
        self.conv = resi_conv(dim, resi_connection)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, L, C = x.shape
        h = self.residual_group(x, x_size, mask)
        h = self.conv(h.transpose(1, 2).reshape(B, C, *x_size))
        return h.flatten(2).transpose(1, 2) + x


def resi_conv(dim: int, resi_connection: str) -> nn.Module:
    """SwinIR's conv before a residual connection: ``'1conv'`` or the bottlenecked ``'3conv'``."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


class PatchEmbed(nn.Module):
    """Image ``(B, C, H, W)`` → tokens ``(B, H·W, C)``, optionally layer-normed (patch size 1)."""

    def __init__(self, dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def round_up(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    return (-(-size[0] // multiple) * multiple, -(-size[1] // multiple) * multiple)
