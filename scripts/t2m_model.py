"""The bundled temperature model (``--model t2m``): export a trained checkpoint, write the
held-out members as netCDF for ``metasr eval`` (the steps of ``make t2m-model``).

Usage::

    python scripts/t2m_model.py export --opt options/train/MetaEDSR_t2m.yml \\
        --checkpoint experiments/MetaEDSR_t2m/models/net_g_latest.pth \\
        -o src/metasr/weights/t2m.safetensors
    python scripts/t2m_model.py heldout --opt options/train/MetaEDSR_t2m.yml \\
        -o experiments/MetaEDSR_t2m/heldout.nc

``export`` rebuilds the network from the checkpoint (BasicSR ``net_g_*.pth`` written by
``MetaSRModel``, which records the network options and the training set's ``field_stats``),
runs it once on the N96 → ERA5 coordinates, and writes a metasr safetensors file whose metadata
holds the architecture, the statistics (units K, mean/std of the training members, grid), and
the member split. ``heldout`` writes the validation members of the option file as one
``(member, month, lat, lon)`` netCDF variable ``surface_temperature`` in K. ``independent``
writes the near-surface air temperature of other sources (HadGEM2, COADS) in K.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from metasr.checkpoints import checkpoint_stats, load_checkpoint, load_model, save_checkpoint
from metasr.climate.grids import named_grid
from metasr.climate.model import coordinate_grid
from metasr.climate.stats import STATS_KEY
from metasr.weights import T2M_CHECKPOINT

#: The bundled model must stay small enough to ship in the wheel.
MAX_BYTES = 10 * 2**20


def _options(path: Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def export(args: argparse.Namespace) -> int:
    opt = _options(args.opt)
    net_opt = dict(opt["network_g"])
    arch_type = net_opt.pop("type")
    # The backend is a run-time choice, not part of the network.
    net_opt.pop("backend", None)
    loaded = load_model(args.checkpoint, network_opt={"type": arch_type, **net_opt})
    stats = checkpoint_stats(loaded)
    if stats is None:
        raise SystemExit(f"{args.checkpoint}: no field_stats (not a MetaSRModel field checkpoint)")
    model = loaded.model
    # One run from the N96 grid's 19x19 coarsening to ERA5: placement and finiteness.
    src, dst = named_grid("19x19"), named_grid("era5")
    with torch.inference_mode():
        y = model(torch.zeros(1, 1, *src.shape), coords=coordinate_grid(src, dst))
    if tuple(y.shape[-2:]) != dst.shape or not torch.isfinite(y).all():
        raise SystemExit(f"the rebuilt model gives {tuple(y.shape)} / non-finite values")
    train, val = opt["datasets"]["train"], opt["datasets"]["val"]
    metadata = {
        STATS_KEY: stats.to_json(),
        "source_checkpoint": args.checkpoint.name,
        "source_entry": loaded.metadata.get("param_key", ""),
        "basicsr_type": arch_type,
        "training_options": args.opt.name,
        "training_data": "GloSea4 sample ensemble (iris-sample-data), surface temperature (K), "
        "N96 145x192",
        "train_members": json.dumps(train.get("members")),
        "heldout_members": json.dumps(val.get("members")),
        "training_ratios": json.dumps(train.get("scale_sampler")),
    }
    save_checkpoint(args.output, model, loaded.arch, net_opt, metadata=metadata)
    size = args.output.stat().st_size
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: {loaded.arch}, {params} parameters, {size / 2**20:.2f} MiB")
    print(f"field_stats: {stats}")
    back = load_checkpoint(args.output)
    for (k, a), b in zip(model.state_dict().items(), back.model.state_dict().values(), strict=True):
        if not torch.equal(a, b):
            raise SystemExit(f"round trip changed {k}")
    if checkpoint_stats(back) != stats:
        raise SystemExit("round trip changed the field statistics")
    return 1 if size > MAX_BYTES else 0


def heldout(args: argparse.Namespace) -> int:
    import xarray as xr

    from metasr.climate.io import write_field
    from metasr.climate.sources import read_glosea4

    val = _options(args.opt)["datasets"]["val"]
    g = read_glosea4(val["dataroot_gt"])
    members = val.get("members") or g.members
    index = [g.members.index(m) for m in members]
    da = xr.DataArray(
        g.data[index].astype(np.float32),
        dims=("member", "month", "lat", "lon"),
        coords={
            "member": members,
            "month": [y * 100 + m for y, m in g.months],
            "lat": g.grid.lat,
            "lon": g.grid.lon,
        },
        name="surface_temperature",
        attrs={
            "units": "K",
            "long_name": "surface temperature (GloSea4, STASH m01s00i024), held-out members",
        },
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_field(da, args.output, history="scripts/t2m_model.py heldout")
    names = ", ".join(members)
    print(f"wrote {args.output}: {len(members)} members x {len(g.months)} months ({names})")
    return 0


#: HadGEM2 1.5 m air temperature (STASH m01s03i236), annual means on N96, in iris-sample-data.
HADGEM2_FILES = {
    "pre-industrial": "pre-industrial.pp",
    "A1B 2098": "A1B.2098.pp",
    "E1 2098": "E1.2098.pp",
}


def independent(args: argparse.Namespace) -> int:
    """Near-surface air temperature the model never saw, as netCDF in K (see ``docs/climate.md``).

    * ``hadgem2.nc``: HadGEM2 1.5 m air temperature (annual means; pre-industrial, A1B and E1
      scenarios for 2098-12 … 2099-11), N96 like GloSea4 but another model configuration, another
      variable (air at 1.5 m, not the surface) and annual instead of monthly means.
    * ``coads_airt.nc``: COADS marine air temperature climatology (12 months, 2°, ships'
      observations: no climate model at all), °C → K (+273.15), land missing (NaN).
    """
    import xarray as xr

    from metasr.climate.io import write_field
    from metasr.climate.pp import read_pp

    args.output.mkdir(parents=True, exist_ok=True)
    if args.iris_dir is not None:
        fields = [read_pp(args.iris_dir / f)[0] for f in HADGEM2_FILES.values()]
        grid = fields[0].grid
        if any(f.stash != 3236 or not f.grid.same_as(grid) for f in fields):
            raise SystemExit("the HadGEM2 files are not 1.5 m temperature on one grid")
        da = xr.DataArray(
            np.stack([f.data for f in fields]).astype(np.float32),
            dims=("run", "lat", "lon"),
            coords={"run": list(HADGEM2_FILES), "lat": grid.lat, "lon": grid.lon},
            name="air_temperature",
            attrs={"units": "K", "long_name": "HadGEM2 1.5 m air temperature, annual mean"},
        )
        out = write_field(da, args.output / "hadgem2.nc", history="scripts/t2m_model.py")
        print(f"wrote {out}: {', '.join(HADGEM2_FILES)}")
    if args.coads is not None:
        ds = xr.open_dataset(args.coads, decode_times=False)
        airt = ds["AIRT"]
        units = str(airt.attrs.get("units", "")).lower()
        if units not in ("deg c", "degc"):
            raise SystemExit(f"{args.coads}: AIRT is in {units!r}, expected deg C")
        da = xr.DataArray(
            (airt.values.astype(np.float64) + 273.15).astype(np.float32),  # NaN (land) stays
            dims=("month", "lat", "lon"),
            coords={
                "month": np.arange(1, airt.shape[0] + 1),
                "lat": ds["COADSY"].values,
                "lon": ds["COADSX"].values,
            },
            name="air_temperature",
            attrs={"units": "K", "long_name": "COADS marine air temperature climatology"},
        )
        out = write_field(da, args.output / "coads_airt.nc", history="scripts/t2m_model.py")
        print(f"wrote {out}: {int(np.isfinite(da.values).mean() * 100)}% of points valid")
    return 0


def _v2_config(opt: dict):
    from metasr.climate.training import TrainConfig

    keys = TrainConfig._fields
    return TrainConfig(
        **{k: (tuple(v) if k == "ratio" else v) for k, v in opt.items() if k in keys}
    )


def train_v2(args: argparse.Namespace) -> int:
    """Train (or continue) the issue-23 model; ``--minutes`` stops (saving) after that long."""
    from metasr.climate.training import train

    torch.set_num_threads(1)
    opt = _options(args.opt)
    out = args.out / opt["name"]
    log_path = out / "train.log"
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as fh:
            fh.write(line + "\n")

    it = train(_v2_config(opt), args.data, out, minutes=args.minutes, log=log)
    log(f"stopped at iteration {it}")
    return 0


def export_v2(args: argparse.Namespace) -> int:
    """``state.pt`` of a v2 run -> a metasr safetensors file with its model card and units."""
    from metasr import create_model
    from metasr.climate.card import ModelCard
    from metasr.climate.training import fold_sources, network_kwargs, temperature_sources
    from metasr.field_stats import FieldStats, stats_metadata

    opt = _options(args.opt)
    sources = fold_sources(_v2_config(opt), temperature_sources(args.data, opt["sources"]))
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    net = create_model("meta_edsr", **network_kwargs())
    net.load_state_dict(state["net"])
    card = ModelCard(
        variable="air_temperature",
        units="K",
        sources=[
            {
                "name": k,
                "variable": v.variable,
                "units": "K",
                "fields": int(v.fields.shape[0]),
                "grid": f"{v.grid.shape[0]}x{v.grid.shape[1]}",
                "global": v.grid.periodic_lon,
            }
            for k, v in sources.items()
        ],  # fmt: skip
        held_out=[*opt.get("held_out_members", []), *opt.get("held_out_sources", [])],
        ratio_min=float(opt["ratio"][0]),
        ratio_max=float(opt["ratio"][1]),
        layouts=["global", "regional", "pole-rows", "no-pole-rows", "gaussian", "masked"],
        normalisation="per-sample",
        constraint=opt.get("constraint", "smooth"),
        training={"iterations": int(state["iteration"]), "init": opt.get("init")},
    )
    # Units for the checks of metasr upscale; mean/std are informational (per-sample norm.).
    stats = FieldStats(("air_temperature",), ("K",), (280.0,), (20.0,), "per-sample")
    meta = {**stats_metadata(stats), **card.metadata(), "training_options": json.dumps(opt)}
    save_checkpoint(args.output, net, "meta_edsr", network_kwargs(), metadata=meta)
    size = args.output.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{args.output}: {size} bytes, above the {MAX_BYTES}-byte cap")
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB, iteration {state['iteration']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="BasicSR checkpoint -> bundled safetensors")
    p.add_argument("--opt", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, default=T2M_CHECKPOINT)
    p.set_defaults(func=export)
    p = sub.add_parser("heldout", help="held-out members -> netCDF")
    p.add_argument("--opt", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=heldout)
    p = sub.add_parser("independent", help="HadGEM2 and COADS air temperature -> netCDF in K")
    p.add_argument("--iris-dir", type=Path, help="iris-sample-data's sample_data folder")
    p.add_argument("--coads", type=Path, help="ferret-datasets' coads_climatology.cdf")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.set_defaults(func=independent)
    p = sub.add_parser("train", help="train or continue the issue-23 model (resumable)")
    p.add_argument("--opt", type=Path, default=Path("options/climate/MetaEDSR_t2m_v2.yml"))
    p.add_argument("--data", type=Path, default=Path("datasets/climate"))
    p.add_argument("--out", type=Path, default=Path("experiments"))
    p.add_argument("--minutes", type=float, default=None, help="stop (saving) after this long")
    p.set_defaults(func=train_v2)
    p = sub.add_parser("export-v2", help="a v2 run's state.pt -> safetensors with model card")
    p.add_argument("--opt", type=Path, default=Path("options/climate/MetaEDSR_t2m_v2.yml"))
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("datasets/climate"))
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=export_v2)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
