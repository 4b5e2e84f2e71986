"""The report renders in a real browser: headless Chromium (Debian's ``chromium`` package) opens
the file offline, takes a screenshot, and logs no console message; the screenshot is not blank
and shows the charts' colours.

Chromium runs in its own process group with a timeout, every name lookup mapped to nowhere
(``--host-resolver-rules``) and background networking off, and the group is killed if it
outlives the test. Skipped, saying why, when no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest
from report_helpers import build_rich_store

from store_fs.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
TIMEOUT = 60.0
WIDTH, HEIGHT = 1200, 4200
# Fill colours of the report's CSS: bars, succeeded, failed, LLM spans, the best version.
CHART_COLOURS = {
    (0x4E, 0x79, 0xA7),
    (0x59, 0xA1, 0x4F),
    (0xE1, 0x57, 0x59),
    (0x7B, 0x61, 0xC9),
    (0xE1, 0xA1, 0x00),
}


def run_chromium(page: Path, screenshot: Path, profile: Path) -> str:
    """Screenshot ``page``; returns Chromium's log (stderr), where console messages appear."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--force-device-scale-factor=0.5",  # a quarter of the pixels to decode; fills keep their colour
        f"--screenshot={screenshot}",
        page.resolve().as_uri(),
    ]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # renderer, GPU and zygote processes too
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return err


def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, colour in (2, 6), interlace) == (8, True, 0)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        _unfilter(kind, line, previous, channels)
        pixels.extend(zip(line[0::channels], line[1::channels], line[2::channels], strict=True))
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        corner = previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    store, _exp = build_rich_store(tmp_path / "store")
    page = tmp_path / "report.html"
    write_report(store, page)
    shot = tmp_path / "report.png"
    log = run_chromium(page, shot, tmp_path / "profile")
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == []  # no script errors, no failed loads reported to the console
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (WIDTH // 2, HEIGHT // 2)
    colours = Counter(pixels)
    white = colours[(255, 255, 255)]
    assert white < 0.97 * len(pixels), "the screenshot is (almost) blank"
    assert len(colours) > 50, "the screenshot has hardly any colours"
    present = {c for c in CHART_COLOURS if colours[c] > 50}
    assert present == CHART_COLOURS, f"chart colours missing: {CHART_COLOURS - present}"
