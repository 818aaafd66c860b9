"""Where a model loses to bicubic on one photograph: its excess squared error, tile by tile.

Same protocol as ``scripts/eval_default_model.py`` (:mod:`metasr.evaluate`): LR by MATLAB
bicubic from the HR photo, stored as 8 bits; the model's output and the bicubic baseline rounded
to 8 bits; BT.601 Y in 8-bit levels, ``ceil(r)`` rows/columns shaved per axis. Then, per pixel,
the *excess* ``(model − HR)² − (bicubic − HR)²`` is summed over square tiles, and the report says

- the model's and bicubic's MSE (and Y-PSNR) on the whole photo,
- what share of the summed excess the worst 5 % of tiles hold (near 1: a few places, such as
  one edge, cost the score; near 0.05: spread evenly, such as texture added everywhere),
- MSE by the HR's local gradient (``|∂y| + |∂x|`` of Y, in levels): flat areas against edges,
- the worst tiles (top-left row and column in the shaved output),

and ``--png`` writes HR | model | bicubic side by side around the worst tile, enlarged 2×.

Usage::

    python scripts/photo_error_tiles.py \\
        datasets/photos/val/mate-backgrounds-mate-nature-Storm.png \\
        --scale 1.5x4 --model default --png storm_worst.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metasr.checkpoints import load_model
from metasr.data.datasets import bicubic_pair
from metasr.data.scales import Scale, parse_scale_spec
from metasr.evaluate import as_upscaler
from metasr.geometry import UpscaleRequest
from metasr.inference import upscale_array
from metasr.io import read_raster
from metasr.metrics import border_shave, quantize_8bit, rgb_to_y, shave

# Gradient classes of the HR's Y (levels per pixel, |∂y| + |∂x|): flat, smooth, soft edge, edge.
GRADIENT_EDGES = (0.0, 0.5, 1.5, 4.0, math.inf)


@dataclass
class TileReport:
    """What :func:`tile_report` measures; MSEs are in squared 8-bit levels of Y."""

    mse_model: float
    mse_bicubic: float
    worst_share: float  # share of the summed excess held by the worst 5 % of tiles
    # Per class: lo, hi (None: unbounded), fraction of pixels, mse_model, mse_bicubic (None: empty).
    gradient_classes: list[dict[str, float | None]]
    worst_tiles: list[tuple[int, int, float]]  # (row, column, mean excess) of the worst tiles


def tile_report(
    hr_y: torch.Tensor, model_y: torch.Tensor, bicubic_y: torch.Tensor, tile: int = 64, top: int = 6
) -> TileReport:
    """Compare two reconstructions of one image tile by tile.

    Args:
        hr_y, model_y, bicubic_y: ``(H, W)`` Y in 8-bit levels, already shaved, same shape.
        tile: tile side in pixels; the last partial row and column of tiles are left out.
        top: how many of the worst tiles to list.

    Raises:
        ValueError: shapes differ, or the image is smaller than one tile.
    """
    if not (hr_y.shape == model_y.shape == bicubic_y.shape) or hr_y.dim() != 2:
        shapes = [tuple(t.shape) for t in (hr_y, model_y, bicubic_y)]
        raise ValueError(f"need three (H, W) images of one shape, got {shapes}")
    H, W = hr_y.shape
    th, tw = H // tile, W // tile
    if th == 0 or tw == 0:
        raise ValueError(f"a {H}x{W} image holds no {tile}x{tile} tile")
    err_m, err_b = (model_y - hr_y) ** 2, (bicubic_y - hr_y) ** 2
    excess = (err_m - err_b)[: th * tile, : tw * tile]
    tiles = excess.reshape(th, tile, tw, tile).mean(dim=(1, 3)).flatten()
    # Share of the *positive* total held by the worst 5 %: tiles where the model wins would
    # otherwise make the share exceed 1 or flip its sign.
    worst = tiles.topk(max(1, tiles.numel() // 20)).values
    positive = tiles.clamp(min=0).sum()
    share = float(worst.clamp(min=0).sum() / positive) if positive > 0 else 0.0
    grad = (hr_y[1:, 1:] - hr_y[:-1, 1:]).abs() + (hr_y[1:, 1:] - hr_y[1:, :-1]).abs()
    classes = []
    for lo, hi in zip(GRADIENT_EDGES, GRADIENT_EDGES[1:], strict=False):
        mask = (grad >= lo) & (grad < hi)
        n = int(mask.sum())
        classes.append(
            {
                "lo": lo,
                "hi": hi if math.isfinite(hi) else None,  # None: unbounded (valid JSON)
                "fraction": n / grad.numel(),
                "mse_model": float(err_m[1:, 1:][mask].mean()) if n else None,
                "mse_bicubic": float(err_b[1:, 1:][mask].mean()) if n else None,
            }
        )
    vals, idx = tiles.topk(min(top, tiles.numel()))
    worst_tiles = [
        (int(k) // tw * tile, int(k) % tw * tile, float(v)) for v, k in zip(vals, idx, strict=True)
    ]
    return TileReport(float(err_m.mean()), float(err_b.mean()), share, classes, worst_tiles)


def reconstructions(
    hr: torch.Tensor, scale: Scale, upscale
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HR, model and bicubic as ``(3, H, W)`` 8-bit images in 0..1, by the evaluation protocol.

    ``upscale(lq (3, h, w) float32 numpy, scale)`` returns the model's ``(3, H, W)`` output.
    """
    lq, ref = bicubic_pair(hr, scale)
    lq8 = quantize_8bit(lq)
    H, W = ref.shape[-2:]
    sr = quantize_8bit(torch.from_numpy(upscale(lq8.float().numpy(), scale)).double())
    bic = quantize_8bit(as_upscaler("bicubic").fn(lq8, scale, (H, W)))
    if sr.shape != ref.shape:
        raise ValueError(f"the model gave {tuple(sr.shape)}, the protocol wants {tuple(ref.shape)}")
    return ref, sr, bic


def _y_levels(x: torch.Tensor, border: tuple[int, int]) -> torch.Tensor:
    return shave(rgb_to_y(x[None]), border)[0, 0] * 255.0


def _save_png(path: Path, images: list[torch.Tensor], row: int, col: int, side: int = 192) -> None:
    from PIL import Image

    H, W = images[0].shape[-2:]
    r0, c0 = max(0, min(row - side // 3, H - side)), max(0, min(col - side // 3, W - side))
    crops = [(t[:, r0 : r0 + side, c0 : c0 + side] * 255).round().byte() for t in images]
    strip = torch.cat(crops, dim=2).permute(1, 2, 0).numpy()
    img = Image.fromarray(strip)
    img.resize((img.width * 2, img.height * 2), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path, help="an RGB photograph (the HR reference)")
    parser.add_argument("--scale", required=True, help="e.g. 2, 1.5x4")
    parser.add_argument("--model", default="default", help="model name or checkpoint")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--png", type=Path, help="write HR | model | bicubic at the worst tile")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    try:
        scale = parse_scale_spec(args.scale)
        if args.tile < 1:
            raise ValueError(f"--tile must be >= 1, got {args.tile}")
        raster = read_raster(args.photo)
        if raster.kind != "image" or raster.data.shape[0] != 3:
            raise ValueError(f"{args.photo} is not an RGB photograph")
        loaded = load_model(args.model)
        hr = quantize_8bit(torch.from_numpy(raster.data).double())
        ref, sr, bic = reconstructions(
            hr, scale, lambda x, s: upscale_array(loaded, x, UpscaleRequest(scale=s))
        )
        border = border_shave(scale)
        report = tile_report(*(_y_levels(t, border) for t in (ref, sr, bic)), tile=args.tile)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def db(mse: float) -> float:
        return 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf

    print(f"{args.photo.name} at x{args.scale}, model {args.model}, tiles {args.tile}²")
    print(
        f"MSE model {report.mse_model:.3f} ({db(report.mse_model):.2f} dB), "
        f"bicubic {report.mse_bicubic:.3f} ({db(report.mse_bicubic):.2f} dB)"
    )
    print(f"worst 5 % of tiles hold {report.worst_share:.0%} of the model's excess error")
    print("| HR gradient (levels) | pixels | MSE model | MSE bicubic |")
    print("|---|---|---|---|")
    for c in report.gradient_classes:
        hi = "" if c["hi"] is None else f"{c['hi']:g}"
        m, b = (("–" if v is None else f"{v:.3f}") for v in (c["mse_model"], c["mse_bicubic"]))
        print(f"| {c['lo']:g}…{hi} | {c['fraction']:.1%} | {m} | {b} |")
    print("worst tiles (row, column, mean excess):", report.worst_tiles)
    if args.png is not None:
        row, col, _ = report.worst_tiles[0]
        _save_png(args.png, [shave(t, border) for t in (ref, sr, bic)], row, col)
        print(f"wrote {args.png}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
