"""``metasr serve`` in a real browser: Debian's headless chromium driven by selenium.

One server for the module (``python -m metasr serve`` on a free loopback port, its temporary
folder under the test's own ``TMPDIR``), one browser. What the page downloads must equal what
``metasr upscale`` writes on the same input: byte for byte for images; for netCDF, every
variable's stored bytes, dimensions and attributes, and the ``history`` line up to its time stamp
and file names (the CLI writes the time of writing and the command's own paths there, so two
runs are never byte-identical). Refusals show the CLI's one-line message in the page. The
JSON endpoints are checked without the browser. ``make test`` installs chromium and
chromium-driver (the Makefile's ``browser`` step); where they are missing the browser tests skip
and say so.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="metasr serve needs the web extra: pip install 'metasr[web]'")
xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")

from metasr.cli import main  # noqa: E402
from metasr.cli.web.jobs import fit_size  # noqa: E402

# The server and browser helpers are those of scripts/serve_screenshots.py.
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
shots = importlib.import_module("serve_screenshots")
WAIT_S = 120  # a loaded 2-core machine: model loading and Gradio's queue take seconds


def _png_claiming(height: int, width: int) -> bytes:
    """A PNG whose header declares height × width RGB pixels (its data is one tiny row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny photo, a file that is not a PNG, one with a huge header, a small field."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / "tiny.png")
    (folder / "bad.png").write_bytes(b"this is not a PNG file")
    (folder / "huge.png").write_bytes(_png_claiming(20000, 20000))
    shots.synthetic_field(folder / "t2m.nc", 9, 12)
    return folder


def _cli(folder: Path, *argv: str, capsys=None) -> str:
    """Run ``metasr ARGV`` in ``folder`` (names as a user would give them). Without ``capsys``
    it must succeed; with it, it must fail, and its stderr (the one-line error) is returned."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        status = main(list(argv))
    finally:
        os.chdir(cwd)
    if capsys is None:
        assert status == 0
        return ""
    assert status != 0
    return capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m metasr serve`` on a free port; after the tests, SIGTERM and the check that
    it removed its temporary folder and wrote nothing in its working folder."""
    tmp = tmp_path_factory.mktemp("server_tmp")
    cwd = tmp_path_factory.mktemp("server_cwd")
    proc, url, seconds, lines = shots.start_serve(cwd, {"TMPDIR": str(tmp)})
    print(f"metasr serve ready after {seconds:.1f} s (process start to ready)")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    leftovers = [p.name for p in tmp.iterdir()]
    assert not any(n.startswith("metasr-serve-") for n in leftovers), leftovers
    assert list(cwd.iterdir()) == [], "metasr serve wrote into its working folder"
    assert "Traceback" not in "".join(lines), "".join(lines)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium under selenium, downloading into a folder of its own."""
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    downloads = tmp_path_factory.mktemp("downloads")
    try:
        driver = shots.headless_chromium(downloads, tmp_path_factory.mktemp("profile"))
    except FileNotFoundError as exc:
        pytest.skip(f"{exc} (make test installs them)")
    driver.downloads = downloads
    yield driver
    driver.quit()


def _open(driver, url: str, tab: str = "Photos"):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: d.find_elements(By.ID, "photo-run"))
    if tab != "Photos":
        driver.find_element(By.XPATH, f"//button[@role='tab'][contains(., '{tab}')]").click()
        wait.until(lambda d: d.find_element(By.ID, "field-run").is_displayed())
    return wait


def _upload(driver, wait, box: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{box} input[type=file]").send_keys(str(path))
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{box} td.filename[aria-label='{path.name}']")
    )


def _type(driver, selector: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.TAB)


def _download(driver, wait, box: str) -> Path:
    """Click the result's download link; the downloaded file once complete."""
    from selenium.webdriver.common.by import By

    for old in driver.downloads.iterdir():
        old.unlink()
    link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{box} a[download]"))[0]
    link.click()

    def done(_):
        files = list(driver.downloads.iterdir())
        complete = [f for f in files if not f.name.endswith(".crdownload")]
        return complete[0] if complete and len(files) == 1 else False

    return wait.until(done)


def test_photo_at_3_5x2_downloads_the_bytes_of_metasr_upscale(server, browser, data, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server)
    _upload(browser, wait, "photo-files", data / "tiny.png")
    browser.find_element(By.CSS_SELECTOR, "#lock input").click()  # unlock: two scales
    _type(browser, "#scale-v input", "3.5")
    _type(browser, "#scale-h input", "2")
    browser.find_element(By.ID, "photo-run").click()
    got = _download(browser, wait, "photo-download")
    status = browser.find_element(By.ID, "photo-status").text
    assert "tiny.png: 20x24 -> 70x48" in status, status
    # The before/after slider holds two images (bicubic and the model's result).
    assert len(browser.find_elements(By.CSS_SELECTOR, "#photo-slider img")) == 2
    _cli(data, "upscale", "tiny.png", "--scale", "3.5x2", "-o", str(tmp_path / "ref.png"), "-q")
    assert got.read_bytes() == (tmp_path / "ref.png").read_bytes()


def test_bad_upload_shows_the_cli_one_line_error(server, browser, data, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server)
    _upload(browser, wait, "photo-files", data / "bad.png")
    browser.find_element(By.ID, "photo-run").click()
    shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo-status .metasr-error"))
    expected = _cli(data, "upscale", "bad.png", "--scale", "2", "-o", str(tmp_path / "x.png"),
                    capsys=capsys)  # fmt: skip
    assert expected.startswith("metasr upscale: error: bad.png:")
    assert shown[0].text == expected
    assert "Traceback" not in browser.page_source


def _same_netcdf(got: Path, ref: Path) -> None:
    """Equal dimensions, variables (stored bytes), attributes; ``history`` up to time stamp and
    paths."""
    import netCDF4

    with netCDF4.Dataset(got) as a, netCDF4.Dataset(ref) as b:
        a.set_auto_maskandscale(False)
        b.set_auto_maskandscale(False)
        assert {k: len(v) for k, v in a.dimensions.items()} == {
            k: len(v) for k, v in b.dimensions.items()
        }
        assert list(a.variables) == list(b.variables)
        for name in a.variables:
            va, vb = a.variables[name], b.variables[name]
            assert va.dtype == vb.dtype and va.dimensions == vb.dimensions, name
            assert np.asarray(va[:]).tobytes() == np.asarray(vb[:]).tobytes(), name
            assert {k: str(va.getncattr(k)) for k in va.ncattrs()} == {
                k: str(vb.getncattr(k)) for k in vb.ncattrs()
            }, name
        ga = {k: a.getncattr(k) for k in a.ncattrs()}
        gb = {k: b.getncattr(k) for k in b.ncattrs()}
        ha, hb = ga.pop("history").splitlines(), gb.pop("history").splitlines()
        assert ga == gb

        def plain(line: str) -> str:  # time stamp and folders out
            line = re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", "", line)
            return re.sub(r"\S*/(\S+\.nc)", r"\1", line)

        assert [plain(x) for x in ha] == [plain(x) for x in hb], (ha, hb)


def test_field_downloads_what_metasr_upscale_writes(server, browser, data, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server, "Fields")
    _upload(browser, wait, "field-file", data / "t2m.nc")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#field-var input").get_attribute("value"))
    assert browser.find_element(By.CSS_SELECTOR, "#field-var input").get_attribute("value") == "t2m"
    browser.find_element(By.CSS_SELECTOR, "#field-grid input[value='hxw']").click()
    _type(browser, "#field-hw textarea, #field-hw input", "18x24")
    browser.find_element(By.ID, "field-run").click()
    got = _download(browser, wait, "field-download")
    status = browser.find_element(By.ID, "field-status").text
    assert "t2m: 9x12 -> 18x24 (t2m)" in status, status
    assert browser.find_elements(By.CSS_SELECTOR, "#field-figure img")
    ref = tmp_path / "t2m_18x24.nc"
    _cli(data, "upscale", "t2m.nc", "--var", "t2m", "--target-grid", "18x24", "--model", "t2m",
         "-o", str(ref), "-q")  # fmt: skip
    _same_netcdf(got, ref)


def test_json_endpoints_match_the_cli_and_refuse_on_the_header(server, data, tmp_path, capsys):
    import httpx

    def post(route: str, name: str, **fields: str) -> httpx.Response:
        with open(data / name, "rb") as f:
            return httpx.post(
                f"{server}{route}", files={"file": (name, f)}, data=fields, timeout=WAIT_S
            )

    r = post("/api/upscale", "tiny.png", scale="3.5x2")
    assert r.status_code == 200, r.text
    _cli(data, "upscale", "tiny.png", "--scale", "3.5x2", "-o", str(tmp_path / "a.png"), "-q")
    assert r.content == (tmp_path / "a.png").read_bytes()
    # fit 100x100 on a 20x24 image: the width fills the box, the height keeps the aspect ratio.
    assert fit_size((20, 24), (100, 100)) == (83, 100)
    r = post("/api/upscale", "tiny.png", fit="100x100")
    _cli(data, "upscale", "tiny.png", "--size", "83x100", "-o", str(tmp_path / "b.png"), "-q")
    assert r.status_code == 200 and r.content == (tmp_path / "b.png").read_bytes()
    # 400 megapixels declared in the header: refused before decoding, with the CLI's message.
    r = post("/api/upscale", "huge.png", scale="2")
    expected = _cli(data, "upscale", "huge.png", "--scale", "2", "-o", str(tmp_path / "c.png"),
                    capsys=capsys)  # fmt: skip
    assert r.status_code == 400 and r.json() == {"error": expected}
    assert "larger than the limit" in expected
    r = post("/api/downscale", "t2m.nc", var="nope", target_grid="18x24", model="t2m")
    assert r.status_code == 400
    assert r.json()["error"] == "metasr upscale: error: t2m.nc: no variable 'nope'; it has ['t2m']"
    r = post("/api/downscale", "t2m.nc", var="t2m", target_grid="18x24", baseline="conservative")
    assert r.status_code == 200
    ref = tmp_path / "t2m_18x24.nc"
    _cli(data, "upscale", "t2m.nc", "--var", "t2m", "--target-grid", "18x24", "--baseline",
         "conservative", "-o", str(ref), "-q")  # fmt: skip
    (tmp_path / "got.nc").write_bytes(r.content)
    _same_netcdf(tmp_path / "got.nc", ref)
    # The target grid from an uploaded file's lat/lon.
    shots.synthetic_field(data / "grid.nc", 15, 20)
    with open(data / "t2m.nc", "rb") as f, open(data / "grid.nc", "rb") as g:
        r = httpx.post(
            f"{server}/api/downscale",
            files={"file": ("t2m.nc", f), "grid_file": ("grid.nc", g)},
            data={"var": "t2m", "baseline": "bilinear"},
            timeout=WAIT_S,
        )
    assert r.status_code == 200, r.text
    ref = tmp_path / "t2m_grid.nc"
    _cli(data, "upscale", "t2m.nc", "--var", "t2m", "--target-grid", "grid.nc", "--baseline",
         "bilinear", "-o", str(ref), "-q")  # fmt: skip
    (tmp_path / "got_grid.nc").write_bytes(r.content)
    _same_netcdf(tmp_path / "got_grid.nc", ref)


def test_fit_size_keeps_the_aspect_ratio_inside_the_box():
    assert fit_size((1080, 1920), (2160, 2160)) == (1215, 2160)
    assert fit_size((100, 50), (300, 300)) == (300, 150)
    assert fit_size((3, 7), (10, 10)) == (4, 10)  # 3·10/7 = 4.29 rounds down: never outside
    assert fit_size((10, 10), (5, 40)) == (5, 5)  # smaller than the image: the CLI refuses it


def test_serve_option_mistakes_are_one_line_before_gradio_loads(capsys):
    import socket

    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "metasr serve: error: bad --port 0: must be 1..65535"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metasr serve: error: cannot listen on 127.0.0.1:{port}:"), err
    assert main(["serve", "--model", "no_such.safetensors"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_import_metasr_does_not_import_gradio():
    import subprocess

    code = "import sys, metasr; print(sorted(m for m in ('gradio', 'fastapi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_several_photos_zip_the_cli_outputs_and_keep_16_bits(data, tmp_path):
    """Without the browser: two uploads (one 16-bit) give a zip of exactly the CLI's PNGs."""
    import shutil
    import zipfile

    import png

    from metasr.cli.web.jobs import Workspace, upscale_photos

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    for folder in (inputs, outputs, tmp_path / "ws"):
        folder.mkdir()
    shutil.copy(data / "tiny.png", inputs)
    rng = np.random.default_rng(1)
    deep = (rng.random((10, 12, 3)) * 65535).astype(np.uint16)
    with open(inputs / "deep.png", "wb") as f:
        png.Writer(12, 10, greyscale=False, bitdepth=16).write(f, deep.reshape(10, 36).tolist())
    uploads = [(inputs / "tiny.png", "tiny.png"), (inputs / "deep.png", "deep.png")]
    results, bundle = upscale_photos(uploads, Workspace(tmp_path / "ws"), scale="2x1.5")
    assert [r.out_shape for r in results] == [(40, 36), (20, 18)]
    assert results[1].after.dtype == np.uint8 and results[1].after.shape == (20, 18, 3)
    with zipfile.ZipFile(bundle) as zf:
        assert sorted(zf.namelist()) == ["deep.png", "tiny.png"]
        for name in ("tiny.png", "deep.png"):
            _cli(inputs, "upscale", name, "--scale", "2x1.5", "-o", str(outputs / name), "-q")
            assert zf.read(name) == (outputs / name).read_bytes(), name
    assert png.Reader(bytes=(outputs / "deep.png").read_bytes()).read()[3]["bitdepth"] == 16
