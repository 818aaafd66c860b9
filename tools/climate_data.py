"""Real climate data, fetched offline-reproducibly through the ordinary package clients.

``python -m tools.climate_data DEST`` (from the repository root; ``make climate-data``) writes
into ``DEST`` (read back with :mod:`metasr.climate.sources`):

- ``etopo5.cdf``: global relief (m, ocean depths negative) on a 1/12° grid, 2161×4320,
  latitude −90 … 90, longitude 0 … 359.92, variable ``ROSE``; from Debian's ``ferret-datasets``
  package (``apt-get download`` + ``dpkg -x``; nothing is installed; run ``apt-get update``
  first). Licence: the Ferret licence (NOAA/PMEL, public domain, "as is"), copied to
  ``licences/ferret-datasets.copyright``.
- ``glosea4/ensemble_NNN.pp``: 13 GloSea4 ensemble members × 6 monthly means (Aug 2011 – Jan
  2012) of surface temperature (K, STASH 24) on the UM N96 grid (145×192), unpacked 32-bit PP
  (:mod:`metasr.climate.pp`); from the ``iris-sample-data`` wheel (``pip download --no-deps``,
  unzipped; iris itself is not installed). Licence: UK Open Government Licence, © British Crown
  copyright; the wheel's METADATA is copied to ``licences/iris-sample-data.METADATA``.
- ``coads_climatology.cdf`` (ferret-datasets) and ``hadgem2/{pre-industrial,A1B.2098,E1.2098}.pp``
  (iris-sample-data): near-surface air temperature from other sources, on which the t2m model
  is scored (COADS marine air temperature climatology, 2°, °C; HadGEM2 1.5 m air temperature,
  annual means, N96, K).
- ``other/{air_temp.pp, ostia_monthly.nc, A1B_north_america.nc, E1_north_america.nc}``
  (iris-sample-data): the other 2-D near-surface/low-level temperature fields, used to train
  the t2m model of issue 23 (docs/climate.md lists each with its grid and role).
- ``manifest.json``: package, version, licence, and size and SHA-256 of every file.

Files already present are kept (delete ``DEST`` to fetch again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .photos import fetch_debian_packages

FERRET_PACKAGE = "ferret-datasets"
IRIS_SAMPLE_PACKAGE = "iris-sample-data"
ETOPO5_MEMBER = "usr/share/ferret-vis/data/etopo5.cdf"
GLOSEA4_PREFIX = "iris_sample_data/sample_data/GloSea4/"
# Near-surface air temperature from other sources, to score the GloSea4-trained t2m model on
# fields it never saw: the COADS marine air temperature climatology (ferret-datasets) and
# HadGEM2 1.5 m air temperature (iris-sample-data). See docs/climate.md.
COADS_MEMBER = "usr/share/ferret-vis/data/coads_climatology.cdf"
HADGEM2_MEMBERS = tuple(
    f"iris_sample_data/sample_data/{name}"
    for name in ("pre-industrial.pp", "A1B.2098.pp", "E1.2098.pp")
)
# Every other 2-D near-surface or low-level temperature field of iris-sample-data (issue 23):
# air_temp.pp (one global 73x96 air temperature field), OSTIA monthly SST (a tropical band,
# 18x432, 54 months) and the HadCM3-style North America near-surface air temperature
# scenarios (regional 37x49, 240 years each). Into DEST/other/.
OTHER_IRIS_MEMBERS = tuple(
    f"iris_sample_data/sample_data/{name}"
    for name in ("air_temp.pp", "ostia_monthly.nc", "A1B_north_america.nc", "E1_north_america.nc")
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_etopo5(dest: Path, work: Path) -> dict[str, object]:
    """``ferret-datasets`` → ``dest/etopo5.cdf`` and its copyright file; a manifest entry."""
    (tree,) = fetch_debian_packages([FERRET_PACKAGE], work)
    src = tree.root / ETOPO5_MEMBER
    if not src.is_file():
        raise RuntimeError(f"{FERRET_PACKAGE} {tree.version} has no {ETOPO5_MEMBER}")
    shutil.copyfile(src, dest / "etopo5.cdf")
    shutil.copyfile(tree.root / COADS_MEMBER, dest / "coads_climatology.cdf")
    (dest / "licences").mkdir(exist_ok=True)
    shutil.copyfile(
        tree.root / "usr/share/doc" / FERRET_PACKAGE / "copyright",
        dest / "licences" / f"{FERRET_PACKAGE}.copyright",
    )
    return {
        "package": f"debian:{FERRET_PACKAGE}",
        "version": tree.version,
        "licence": "Ferret License Agreement (NOAA/PMEL; public domain, as is)",
        "files": ["etopo5.cdf", "coads_climatology.cdf"],
    }


def fetch_glosea4(dest: Path, work: Path) -> dict[str, object]:
    """``iris-sample-data`` wheel → ``dest/glosea4/*.pp`` and its METADATA; a manifest entry."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-d", str(work), IRIS_SAMPLE_PACKAGE],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip download {IRIS_SAMPLE_PACKAGE} failed: {done.stderr[-500:]}")
    wheels = sorted(work.glob("iris_sample_data-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download left no {IRIS_SAMPLE_PACKAGE} wheel in {work}")
    wheel = wheels[-1]
    version = re.match(r"iris_sample_data-([^-]+)-", wheel.name)
    out = dest / "glosea4"
    out.mkdir(exist_ok=True)
    files = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith(GLOSEA4_PREFIX) and info.filename.endswith(".pp"):
                target = out / Path(info.filename).name
                target.write_bytes(zf.read(info))
                files.append(f"glosea4/{target.name}")
            elif info.filename in HADGEM2_MEMBERS:
                (dest / "hadgem2").mkdir(exist_ok=True)
                target = dest / "hadgem2" / Path(info.filename).name
                target.write_bytes(zf.read(info))
                files.append(f"hadgem2/{target.name}")
            elif info.filename in OTHER_IRIS_MEMBERS:
                (dest / "other").mkdir(exist_ok=True)
                target = dest / "other" / Path(info.filename).name
                target.write_bytes(zf.read(info))
                files.append(f"other/{target.name}")
            elif info.filename.endswith(".dist-info/METADATA"):
                (dest / "licences").mkdir(exist_ok=True)
                (dest / "licences" / f"{IRIS_SAMPLE_PACKAGE}.METADATA").write_bytes(zf.read(info))
    if not files:
        raise RuntimeError(f"{wheel.name} has no GloSea4 PP files under {GLOSEA4_PREFIX}")
    return {
        "package": f"pypi:{IRIS_SAMPLE_PACKAGE}",
        "version": version.group(1) if version else "unknown",
        "licence": "UK Open Government Licence, (c) British Crown copyright",
        "files": sorted(files),
    }


def fetch_climate_data(dest: str | Path) -> Path:
    """Fetch both sources into ``dest`` (skipping those present) and write ``manifest.json``.

    Returns:
        The manifest's path.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    sources = {s["package"]: s for s in old.get("sources", [])}
    with tempfile.TemporaryDirectory(prefix="metasr-climate-") as tmp:
        work = Path(tmp)
        ferret = [dest / "etopo5.cdf", dest / "coads_climatology.cdf"]
        if not all(f.is_file() for f in ferret) or f"debian:{FERRET_PACKAGE}" not in sources:
            entry = fetch_etopo5(dest, work / "deb")
            sources[entry["package"]] = entry  # type: ignore[index]
        hadgem2 = [dest / "hadgem2" / Path(m).name for m in HADGEM2_MEMBERS]
        hadgem2 += [dest / "other" / Path(m).name for m in OTHER_IRIS_MEMBERS]
        if (
            not any((dest / "glosea4").glob("*.pp"))
            or not all(f.is_file() for f in hadgem2)
            or f"pypi:{IRIS_SAMPLE_PACKAGE}" not in sources
        ):
            (work / "pip").mkdir()
            entry = fetch_glosea4(dest, work / "pip")
            sources[entry["package"]] = entry  # type: ignore[index]
    for entry in sources.values():
        entry["sizes"] = {f: (dest / f).stat().st_size for f in entry["files"]}
        entry["sha256"] = {f: _sha256(dest / f) for f in entry["files"]}
    from metasr.io import atomic_write_text

    atomic_write_text(
        manifest_path, json.dumps({"sources": list(sources.values())}, indent=2) + "\n"
    )
    return manifest_path


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.climate_data DEST``: fetch, print a summary; 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default="datasets/climate")
    args = parser.parse_args(argv)
    try:
        manifest = fetch_climate_data(args.dest)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for entry in json.loads(manifest.read_text())["sources"]:
        total = sum(entry["sizes"].values())
        print(f"{entry['package']} {entry['version']}: {len(entry['files'])} files, "
              f"{total / 1e6:.1f} MB ({entry['licence']})")  # fmt: skip
    print(f"manifest: {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
