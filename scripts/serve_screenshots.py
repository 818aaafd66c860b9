"""Screenshots of ``metasr serve``'s two tabs, and its start-up time, in headless chromium.

    python scripts/serve_screenshots.py --out docs/figures --starts 3

Starts ``python -m metasr serve`` on a free loopback port (``--starts`` times, to time the
start-up: process start to the server answering, printed with the median), opens the page in
Debian's chromium (``apt-get install chromium chromium-driver``) under selenium, upscales the
bundled ``chelsea_crop.png`` at 3.5x2 in the Photos tab, and downscales a synthetic temperature
field (9x12 -> 72x96, the bundled ``t2m`` model) in the Fields tab; writes
``serve_photos.png`` and ``serve_fields.png``. The helpers that start the server and the browser
are also those of ``tests/cli/test_serve.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The flags the browser runs with: headless, no sandbox (root), and nothing that reaches out.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
READY = re.compile(r"metasr serve: ready at (http://\S+) \(([\d.]+) s\)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str, float, list[str]]:
    """Start ``python -m metasr serve`` on a free port and wait until it answers.

    Returns:
        The process, its URL, seconds from process start to ready (measured here), and the
        list its output lines keep arriving in.

    Raises:
        RuntimeError: it exited or did not get ready in ``timeout`` seconds (with its output).
    """
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasr", "serve", "--port", str(port), *extra],
        cwd=cwd,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if READY.search(line):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("metasr serve did not get ready:\n" + "".join(lines))
    seconds = time.perf_counter() - start
    url = READY.search("".join(lines)).group(1)
    return proc, url, seconds, lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``): start-up cost
    without the waiting a loaded machine adds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def headless_chromium(downloads: Path, profile: Path, size: tuple[int, int] = (1400, 1000)):
    """Debian's chromium under selenium, headless, downloading into ``downloads``.

    Raises:
        FileNotFoundError: chromium or chromedriver is missing.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(
                f"{path} missing: install Debian's chromium and chromium-driver"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size={},{}".format(*size),
    ):
        options.add_argument(flag)
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver


def synthetic_field(path: Path, h: int = 9, w: int = 12) -> Path:
    """A temperature-like field (K): colder poles, a wave in longitude, a little noise."""
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(0)
    lat = np.linspace(-80, 80, h)
    lon = np.arange(w) * (360.0 / w)
    wave = 4 * np.sin(np.deg2rad(2 * lon))[None, None, :] * np.cos(np.deg2rad(lat))[None, :, None]
    values = 250 + 40 * np.cos(np.deg2rad(lat))[None, :, None] + wave
    values = values + rng.normal(0, 1, (2, h, w))
    da = xr.DataArray(
        values.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": [0, 1], "lat": ("lat", lat, {"units": "degrees_north"}), "lon": lon},
        name="t2m",
        attrs={"units": "K", "long_name": "2 metre temperature (synthetic)"},
    )
    da.to_dataset().to_netcdf(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--starts", type=int, default=3, help="start-ups to time (median)")
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    import metasr

    work = Path(tempfile.mkdtemp(prefix="serve-shots-"))
    times, cpu = [], []
    for _ in range(max(args.starts - 1, 0)):
        proc, _, seconds, _ = start_serve(work)
        times.append(seconds)
        cpu.append(cpu_seconds(proc.pid))
        proc.terminate()
        proc.wait(60)
    proc, url, seconds, _ = start_serve(work)
    times.append(seconds)
    cpu.append(cpu_seconds(proc.pid))
    print(
        f"start-up to ready: {', '.join(f'{t:.1f}' for t in times)} s wall, median "
        f"{statistics.median(times):.1f} s; CPU {', '.join(f'{t:.1f}' for t in cpu)} s, "
        f"median {statistics.median(cpu):.1f} s; load average {os.getloadavg()[0]:.1f}"
    )
    driver = headless_chromium(work / "downloads", work / "profile", (1400, 1200))
    try:
        wait = WebDriverWait(driver, 300)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.ID, "photo-run"))
        photo = Path(metasr.__file__).parent / "assets" / "chelsea_crop.png"
        driver.find_element(By.CSS_SELECTOR, "#photo-files input[type=file]").send_keys(str(photo))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo-files td.filename"))
        driver.find_element(By.CSS_SELECTOR, "#lock input").click()
        for sel, text in (("#scale-v input", "3.5"), ("#scale-h input", "2")):
            box = driver.find_element(By.CSS_SELECTOR, sel)
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(text, Keys.TAB)
        driver.find_element(By.ID, "photo-run").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo-download a[download]"))
        time.sleep(1)
        args.out.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(args.out / "serve_photos.png"))
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Fields')]").click()
        field = synthetic_field(work / "t2m_synthetic.nc")
        driver.find_element(By.CSS_SELECTOR, "#field-file input[type=file]").send_keys(str(field))
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#field-var input").get_attribute("value")
        )
        driver.find_element(By.CSS_SELECTOR, "#field-grid input[value='hxw']").click()
        box = driver.find_element(By.CSS_SELECTOR, "#field-hw textarea, #field-hw input")
        box.send_keys("72x96", Keys.TAB)
        driver.find_element(By.ID, "field-run").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#field-download a[download]"))
        time.sleep(1)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(args.out / "serve_fields.png"))
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'serve_photos.png'} and {args.out / 'serve_fields.png'}")


if __name__ == "__main__":
    main()
