"""Arbitrary-scale data: per-axis bicubic resize, scale samplers, datasets, one scale per batch."""

from __future__ import annotations

import importlib.util
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metasr.data import (
    ArbitraryScaleDataset,
    ArbitraryScaleTestDataset,
    BatchSpec,
    ScaleBatchSampler,
    build_scale_sampler,
    format_scale,
    imresize,
    lq_size_for,
    parse_scale_list,
    resize_matrix,
)
from metasr.data.scales import META_SR_SCALES, GridScales
from metasr.geometry import resolve_output_size
from tools.samples import make_synthetic_images


@pytest.fixture(scope="module")
def bsr_matlab():
    """BasicSR's MATLAB functions (the integration installs BasicSR's torchvision shim)."""
    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("BasicSR is not installed (pip install 'metasr[train]')")
    import metasr.integrations.basicsr  # noqa: F401  (installs BasicSR's torchvision shim)

    return importlib.import_module("basicsr.utils.matlab_functions")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_synthetic_images(root / "train", n=4, size=(80, 72), seed=0)
    make_synthetic_images(root / "val", n=2, size=(41, 53), seed=1)
    return root


# -- resize -----------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1 / 2, 1 / 3, 1 / 2.3, 1 / 4, 1 / 1.1, 1 / 3.7, 2.0, 2.5, 1.0])
def test_imresize_matches_basicsr(bsr_matlab, s):
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3))  # BasicSR: numpy HWC in 0..1
    ref = bsr_matlab.imresize(img, s)
    ours = imresize(torch.from_numpy(img).permute(2, 0, 1), s).permute(1, 2, 0).numpy()
    assert ours.shape == ref.shape
    # BasicSR computes in float32; ours in the input's float64.
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def _basicsr_axis_matrix(m, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The dense per-axis matrix implied by BasicSR's ``calculate_weights_indices``."""
    weights, indices, sym_s, _ = m.calculate_weights_indices(n_in, n_out, scale, "cubic", 4, True)
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        start = int(indices[i][0])
        for t, w in enumerate(weights[i].tolist()):
            k = start + t - sym_s  # index into the unpadded axis
            if k < 0:
                k = -1 - k  # BasicSR's symmetric padding: ... 1 0 | 0 1 ...
            elif k >= n_in:
                k = 2 * n_in - 1 - k
            mat[i, k] += w
    return mat


@pytest.mark.parametrize("r_v,r_h", [(1.5, 4.0), (3.5, 2.0), (2.95, 3.75), (4.0, 1.4)])
def test_per_axis_resize_matches_basicsr_weights(bsr_matlab, r_v, r_h):
    h, w = 60, 56
    for n_in, r in ((h, r_v), (w, r_h)):
        n_out = math.ceil(n_in / r)
        ref = _basicsr_axis_matrix(bsr_matlab, n_in, n_out, 1 / r)
        # BasicSR builds its weights in float32.
        np.testing.assert_allclose(resize_matrix(n_in, n_out, 1 / r), ref, atol=1e-5)
    # And the 2-D resize is exactly the two axis matrices applied in turn.
    x = torch.rand(2, h, w, dtype=torch.float64)
    y = imresize(x, scale=(1 / r_v, 1 / r_h))
    mv = torch.tensor(resize_matrix(h, None, 1 / r_v))
    mh = torch.tensor(resize_matrix(w, None, 1 / r_h))
    torch.testing.assert_close(y, mv @ x @ mh.T)


@pytest.mark.parametrize("p", [16, 24, 50])
@pytest.mark.parametrize(
    "r", [(1.1, 1.1), (2.3, 2.3), (1.5, 4.0), (3.9, 2.0), (7.5104166666, 10.0)]
)
def test_hr_crop_shrinks_to_exact_patch(p, r):
    H, W, _, _ = resolve_output_size(p, p, scale=r)
    lq = imresize(torch.rand(3, H, W), scale=(1 / r[0], 1 / r[1]))
    assert lq.shape == (3, p, p)  # MATLAB's ceil(H / r) is p for every such crop


def test_imresize_dtypes_and_identity():
    x64 = torch.rand(1, 9, 11, dtype=torch.float64)
    assert imresize(x64, scale=(0.5, 0.7)).dtype == torch.float64
    torch.testing.assert_close(imresize(x64, scale=1.0), x64)
    u8 = (torch.rand(3, 20, 20) * 255).to(torch.uint8)
    out = imresize(u8, scale=0.5)
    assert out.dtype == torch.uint8 and out.shape == (3, 10, 10)
    ref = imresize(u8.float(), scale=0.5).round().clamp(0, 255)
    assert torch.equal(out, ref.to(torch.uint8))
    arr = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    assert isinstance(imresize(arr, size=(10, 3)), np.ndarray)
    # A kernel wider than the input (tiny images) still mirrors correctly: rows sum to one.
    m = resize_matrix(2, 1, 1 / 4)
    np.testing.assert_allclose(m.sum(1), 1.0)


def test_imresize_errors():
    with pytest.raises(ValueError, match="scale"):
        imresize(torch.rand(4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        imresize(torch.rand(4), scale=2)
    with pytest.raises(ValueError, match="> 0"):
        imresize(torch.rand(4, 4), scale=-1)
    with pytest.raises(TypeError, match="a number or a pair"):
        imresize(torch.rand(4, 4), scale="2")


# -- scales -----------------------------------------------------------------------------------


def test_parse_and_format_scales():
    assert parse_scale_list("2, 3,4,1.5x4,3.5X2") == [
        (2.0, 2.0),
        (3.0, 3.0),
        (4.0, 4.0),
        (1.5, 4.0),
        (3.5, 2.0),
    ]
    for s in [(2.0, 2.0), (1.5, 4.0), (2.95, 3.75)]:
        assert parse_scale_list(format_scale(s)) == [s]
    for bad in ["", "two", "1x2x3", "0.5", "2,,x"]:
        with pytest.raises(ValueError):
            parse_scale_list(bad)


def test_one_scale_grammar():
    from metasr.data import parse_scale_spec, parse_size_list, parse_size_spec, to_scale

    assert parse_scale_spec("2") == (2.0, 2.0)
    assert parse_scale_spec(" 2.5 ") == (2.5, 2.5)
    for text in ("3.5x2", "3.5X2", "3.5×2", "3.5*2", " 3.5 x 2 "):
        assert parse_scale_spec(text) == (3.5, 2.0), text
    assert parse_scale_spec("1e1x2.") == (10.0, 2.0)
    for bad, message in [
        ("3.5,2", "bad scale '3.5,2'"),  # a comma separates scales: not one scale
        ("inf", "bad scale"),
        ("nan", "bad scale"),
        ("1x2x3", "bad scale"),
        ("0.5", ">= 1"),
        ("2x0.9", ">= 1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_scale_spec(bad)
    # "3.5,2" means the same wherever a list is accepted: two scales, never one pair.
    two = [(3.5, 3.5), (2.0, 2.0)]
    assert parse_scale_list("3.5,2") == two
    assert build_scale_sampler("3.5,2").max_scale == (3.5, 3.5)
    assert {build_scale_sampler("3.5,2").sample(random.Random(i)) for i in range(20)} == set(two)
    assert to_scale("3.5x2") == (3.5, 2.0) and to_scale([3.5, 2]) == (3.5, 2.0)
    with pytest.raises(ValueError):
        to_scale("3.5,2")
    # Sizes have their own grammar (integers, HEIGHTxWIDTH) and are never read as factors.
    assert parse_size_spec("721x1440") == (721, 1440)
    assert parse_size_list("96x144, 48X72") == [(96, 144), (48, 72)]
    for bad in ["721", "7.5x10", "0x5", "10x", ""]:
        with pytest.raises(ValueError, match="size"):
            parse_size_list(bad) if bad == "" else parse_size_spec(bad)


def test_comma_is_never_one_scale():
    from metasr.data import parse_scale_spec

    for text in ["3.5,2", "3.5,2,1", "3.5x2,1"]:
        with pytest.raises(ValueError, match="bad scale"):
            parse_scale_spec(text)


def test_test_dataset_reads_scale_lists_with_the_same_grammar(photos):
    ds = ArbitraryScaleTestDataset(dataroot_gt=str(photos / "val"), scales="3.5,2,1.5x4")
    assert ds.scales == [(3.5, 3.5), (2.0, 2.0), (1.5, 4.0)]


def test_scripts_do_not_import_cli_modules():
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    for path in scripts.glob("*.py"):
        assert not re.search(r"^\s*(from|import) metasr\.cli\b", path.read_text(), re.M), path


def test_meta_sr_grid():
    grid = GridScales()
    assert grid.values == META_SR_SCALES
    assert len(grid.values) == 30 and grid.values[0] == 1.1 and grid.values[-1] == 4.0
    assert grid.values[2] == 1.3  # no 1.3000000000000003 in labels or crop sizes
    rng = random.Random(0)
    draws = {grid.sample(rng) for _ in range(300)}
    assert all(a == b for a, b in draws) and len(draws) > 20


def test_samplers_from_options():
    rng = random.Random(1)
    asym = build_scale_sampler({"type": "grid", "min": 1.1, "max": 4.0, "symmetric": False})
    assert any(a != b for a, b in (asym.sample(rng) for _ in range(50)))
    pairs = build_scale_sampler({"type": "choice", "scales": [[1.5, 4], [3.5, 2]]})
    assert {pairs.sample(rng) for _ in range(50)} == {(1.5, 4.0), (3.5, 2.0)}
    weighted = build_scale_sampler({"type": "choice", "scales": [2, 3], "weights": [1, 0]})
    assert {weighted.sample(rng) for _ in range(20)} == {(2.0, 2.0)}
    uni = build_scale_sampler(
        {"type": "uniform", "min": [1.1, 2.0], "max": [2.0, 4.0], "p_symmetric": 0.0}
    )
    for _ in range(50):
        r_v, r_h = uni.sample(rng)
        assert 1.1 <= r_v <= 2.0 and 2.0 <= r_h <= 4.0
    assert build_scale_sampler("2,1.5x4").sample(rng) in {(2.0, 2.0), (1.5, 4.0)}
    climate = build_scale_sampler({"type": "fixed", "lq_size": [96, 144], "gt_size": [721, 1440]})
    scale = climate.sample(rng)
    assert resolve_output_size(96, 144, scale=scale)[:2] == (721, 1440)
    assert lq_size_for(721, 1440, scale) == (96, 144, 721, 1440)


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"type": "gaussian"}, "type must be one of"),
        ({"type": "grid", "mn": 1}, "bad options"),
        ({"type": "grid", "min": 0.5}, ">= 1"),
        ({"type": "uniform", "min": 3, "max": 2}, "below min"),
        ({"type": "choice", "scales": []}, "non-empty"),
        ({"type": "choice", "scales": [2, 3], "weights": [1]}, "one per scale"),
        ({"type": "fixed"}, "needs 'scale'"),
    ],
)
def test_sampler_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        build_scale_sampler(spec)


def test_lq_size_for_crops_hr_to_model_output():
    assert lq_size_for(256, 256, (3.0, 3.0)) == (85, 85, 255, 255)
    assert lq_size_for(100, 90, (1.5, 4.0)) == (66, 22, 99, 88)
    with pytest.raises(ValueError, match="too small"):
        lq_size_for(3, 3, (4.0, 4.0))


# -- training dataset ------------------------------------------------------------------------


def test_one_scale_per_batch_through_plain_dataloader(photos):
    ds = ArbitraryScaleDataset(
        dataroot_gt=str(photos / "train"),
        lq_patch_size=[8, 12],
        scale_sampler={"type": "uniform", "min": 1.1, "max": 4.0, "p_symmetric": 0.5},
        cache=True,
    )
    random.seed(0)
    loader = DataLoader(ds, batch_size=3, shuffle=True, drop_last=True)
    seen = set()
    for _ in range(4):
        for batch in loader:
            scale = batch["scale"]
            assert scale.shape == (3, 2) and scale.dtype == torch.float64
            assert bool((scale == scale[0]).all()), "a batch must share one scale"
            r = (float(scale[0, 0]), float(scale[0, 1]))
            p = batch["lq"].shape[-1]
            assert 8 <= p <= 12 and batch["lq"].shape == (3, 3, p, p)
            H, W, _, _ = resolve_output_size(p, p, scale=r)
            assert batch["gt"].shape == (3, 3, H, W)
            seen.add(r)
    assert len(seen) >= 3 and any(a != b for a, b in seen)


def test_scale_batch_sampler_is_reproducible(photos):
    ds = ArbitraryScaleDataset(
        dataroot_gt=str(photos / "train"), lq_patch_size=8, scale_sampler="2,3,1.5x4"
    )

    def specs(seed):
        sampler = ScaleBatchSampler(ds, batch_size=2, sampler=range(4), seed=seed)
        return [b[0][1] for b in sampler]

    assert specs(3) == specs(3)
    assert len(ScaleBatchSampler(ds, batch_size=3, sampler=range(4), drop_last=False)) == 2
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        ScaleBatchSampler(ds, batch_size=2.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ScaleBatchSampler(ds, batch_size=0)
    loader = DataLoader(ds, batch_sampler=ScaleBatchSampler(ds, batch_size=2, seed=0))
    batch = next(iter(loader))
    assert bool((batch["scale"] == batch["scale"][0]).all())


def test_lr_is_bicubic_of_the_hr_crop(photos):
    ds = ArbitraryScaleDataset(
        dataroot_gt=str(photos / "train"),
        lq_patch_size=10,
        use_hflip=False,
        use_rot=False,
        use_vflip=False,
        quantize_lq=False,
    )
    item = ds.sample(0, BatchSpec(scale=(1.5, 4.0), lq_patch=10), rng=random.Random(0))
    assert item["gt"].shape == (3, 15, 40)
    torch.testing.assert_close(item["lq"], imresize(item["gt"], scale=(1 / 1.5, 1 / 4.0)))
    quantized = ArbitraryScaleDataset(dataroot_gt=str(photos / "train"), lq_patch_size=10)
    lq = quantized.sample(0, BatchSpec((2.0, 2.0), 10))["lq"]
    torch.testing.assert_close(lq, (lq * 255).round() / 255)


def test_rotation_only_at_symmetric_scales(photos):
    ds = ArbitraryScaleDataset(dataroot_gt=str(photos / "train"), lq_patch_size=10)
    rng = random.Random(0)
    for _ in range(20):
        item = ds.sample(1, BatchSpec(scale=(1.5, 4.0), lq_patch=10), rng)
        assert item["gt"].shape == (3, 15, 40)  # a transposition would give 40 x 15


def test_whole_images_and_arrays(tmp_path):
    field = np.random.default_rng(0).normal(280.0, 10.0, (721, 1440)).astype(np.float32)
    (tmp_path / "hr").mkdir()
    np.save(tmp_path / "hr" / "t2m_000.npy", field)
    np.save(tmp_path / "hr" / "t2m_001.npy", field[None] + 1.0)
    ds = ArbitraryScaleDataset(
        dataroot_gt=str(tmp_path / "hr"),
        lq_patch_size=None,
        scale_sampler={"type": "fixed", "lq_size": [96, 144], "gt_size": [721, 1440]},
        use_hflip=False,
        use_vflip=False,
        use_rot=False,
        mean=280.0,
        std=10.0,
    )
    assert ds.kind == "array" and not ds.quantize_lq
    item = ds[0]
    assert item["lq"].shape == (1, 96, 144) and item["gt"].shape == (1, 721, 1440)
    torch.testing.assert_close(ds.denormalize(item["gt"]), torch.from_numpy(field)[None])


def test_paired_lr_folder(tmp_path, photos):
    hr = tmp_path / "hr"
    make_synthetic_images(hr, n=2, size=(60, 60), seed=5)
    for scale in ((2.0, 2.0), (1.5, 4.0)):
        folder = tmp_path / "lr" / f"X{format_scale(scale)}"
        for p in sorted(hr.iterdir()):
            from metasr.data import read_image, write_image

            lr = imresize(read_image(p), scale=(1 / scale[0], 1 / scale[1]))
            write_image(folder / f"{p.stem}x{format_scale(scale)}.png", lr)
    ds = ArbitraryScaleDataset(
        dataroot_gt=str(hr),
        dataroot_lq=str(tmp_path / "lr" / "X{scale}"),
        lq_filename_tmpl="{stem}x{scale}",
        scale_sampler={"type": "choice", "scales": [2, [1.5, 4]]},
        lq_patch_size=8,
    )
    for scale in ((2.0, 2.0), (1.5, 4.0)):
        item = ds.sample(1, BatchSpec(scale, 8), random.Random(0))
        H, W, _, _ = resolve_output_size(8, 8, scale=scale)
        assert item["lq"].shape == (3, 8, 8) and item["gt"].shape == (3, H, W)
        assert item["lq_path"].endswith(f"x{format_scale(scale)}.png")
    test = ArbitraryScaleTestDataset(
        dataroot_gt=str(hr),
        dataroot_lq=str(tmp_path / "lr" / "X{scale}"),
        lq_filename_tmpl="{stem}x{scale}",
        scales="1.5x4",
    )
    assert test[0]["lq"].shape == (3, 40, 15)
    with pytest.raises(FileNotFoundError, match="scale 3"):
        ds.sample(0, BatchSpec((3.0, 3.0), 8))


def test_test_dataset_items_and_sizes(photos):
    ds = ArbitraryScaleTestDataset(dataroot_gt=str(photos / "val"), scales=[2, [1.5, 4]])
    assert len(ds) == 4
    labels = [format_scale(tuple(ds[i]["scale"].tolist())) for i in range(len(ds))]
    assert labels == ["2", "2", "1.5x4", "1.5x4"]  # scale by scale
    item = ds[2]
    h, w = item["lq"].shape[-2:]
    H, W, _, _ = resolve_output_size(h, w, scale=(1.5, 4.0))
    assert item["gt"].shape[-2:] == (H, W) == (40, 52)
    with pytest.raises(IndexError):
        ds[4]


def test_dataset_errors(tmp_path, photos):
    with pytest.raises(FileNotFoundError, match="dataroot_gt path does not exist"):
        ArbitraryScaleDataset(dataroot_gt=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="'dataroot_gt'"):
        ArbitraryScaleDataset()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        ArbitraryScaleDataset(dataroot_gt=str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    make_synthetic_images(mixed, n=1, size=(20, 20))
    np.save(mixed / "a.npy", np.zeros((20, 20)))
    with pytest.raises(ValueError, match="mixes images"):
        ArbitraryScaleDataset(dataroot_gt=str(mixed))
    with pytest.raises(ValueError, match="lq_patch_size"):
        ArbitraryScaleDataset(dataroot_gt=str(photos / "train"), lq_patch_size=[12, 8])
    ds = ArbitraryScaleDataset(dataroot_gt=str(photos / "val"), lq_patch_size=32)
    with pytest.raises(ValueError, match="smaller than the .* HR crop"):
        ds.sample(0, BatchSpec((4.0, 4.0), 32))
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "x.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(C, H, W\)"):
        ArbitraryScaleTestDataset(dataroot_gt=str(bad))[0]


# -- paired LR of the wrong size (issue 10, item 6) ---------------------------------------------


def _paired(root: Path, lr_sizes: dict[str, tuple[int, int]], hr: tuple[int, int] = (60, 72)):
    """HR images and, per scale label, LR images of the given sizes (folders ``lr/X{scale}``)."""
    from metasr.data.files import write_image

    make_synthetic_images(root / "hr", n=2, size=hr, seed=0)
    torch.manual_seed(1)
    for label, size in lr_sizes.items():
        (root / "lr" / f"X{label}").mkdir(parents=True)
        for i in range(2):
            write_image(root / "lr" / f"X{label}" / f"img{i:03d}.png", torch.rand(3, *size))
    return {"dataroot_gt": str(root / "hr"), "dataroot_lq": str(root / "lr" / "X{scale}")}


def test_paired_lr_of_the_wrong_size_is_refused(tmp_path):
    from metasr.data import ArbitraryScaleDataset, ArbitraryScaleTestDataset

    # 60x72 at x2 wants 30x36; these LR files are 24x too small (thumbnails, another folder).
    opts = _paired(tmp_path, {"2": (2, 3)})
    ds = ArbitraryScaleTestDataset(opts, scales=[2])
    with pytest.raises(ValueError, match=r"paired LR .*img000\.png is 2x3, but its HR img000\.png "
                       r"\(60x72\) at scale 2 needs about 30x36"):  # fmt: skip
        ds[0]
    train = ArbitraryScaleDataset(
        opts, lq_patch_size=1, scale_sampler={"type": "choice", "scales": [2]}
    )
    with pytest.raises(ValueError, match="is 2x3, but its HR"):
        train[0]


def test_paired_lr_tolerance_accepts_every_usual_convention(tmp_path):
    from metasr.data import ArbitraryScaleTestDataset

    # 60x72 at x2.3 is 26.1x31.3: MATLAB's ceil (27x32) and the protocol's floor (26x31) pass,
    # and so does an LR of a mod-cropped HR a pixel short; four pixels off does not.
    for size, ok in (((27, 32), True), ((26, 31), True), ((25, 30), True), ((22, 31), False)):
        root = tmp_path / f"{size[0]}x{size[1]}"
        ds = ArbitraryScaleTestDataset(_paired(root, {"2.3": size}), scales=[2.3])
        if ok:
            assert tuple(ds[0]["lq"].shape[-2:]) == size
        else:
            with pytest.raises(ValueError, match="needs about 26x31"):
                ds[0]
