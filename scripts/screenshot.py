"""Screenshot of the search page over the demo index: docs/screenshot.png, shown in the README.

Runs `clipdex demo --serve` (the shipped shapes model over generated images, offline), opens
the page in the system's headless Chromium (driven by Playwright), searches, waits for every
thumbnail in view to load and saves the page.

    python scripts/screenshot.py                  # 288 images -> docs/screenshot.png
    python scripts/screenshot.py --tiny           # 48 images -> a temporary folder
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT_MS = 30_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            sys.exit(f"clipdex demo --serve stopped:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                sys.exit(f"the server was not ready within {seconds:.0f} s")
            time.sleep(0.3)


def shoot(base: str, query: str, out: Path, width: int, height: int) -> str:
    """Search `query` on the page and save a screenshot; return what the page says."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(WAIT_MS)
        page.goto(base + "/?" + urllib.parse.urlencode({"q": query}))
        page.wait_for_function("() => document.body.dataset.state === 'done'")
        # every thumbnail in view has arrived and decoded (function form: the page's CSP
        # forbids evaluating strings)
        page.wait_for_function(
            """() => [...document.querySelectorAll('.tile img')]
                .filter(img => img.getBoundingClientRect().top < innerHeight)
                .every(img => img.complete && img.naturalWidth > 0)"""
        )
        page.hover(".tile >> nth=0")  # shows the first result's file name
        page.screenshot(path=str(out))
        summary = page.text_content("#summary") or ""
        browser.close()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="48 images, into a temporary folder")
    parser.add_argument("--out", type=Path, help="where to save (default docs/screenshot.png)")
    parser.add_argument("--query", default="a red circle")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=640)
    args = parser.parse_args()
    count = 48 if args.tiny else 288
    with tempfile.TemporaryDirectory(prefix="clipdex-screenshot-") as tmp:
        out = args.out or (Path(tmp) / "screenshot.png" if args.tiny else DOCS / "screenshot.png")
        port = free_port()
        log = Path(tmp) / "serve.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        with log.open("w") as sink:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clipdex",
                    "demo",
                    "--serve",
                    "--count",
                    str(count),
                    "--port",
                    str(port),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, server, log)
                summary = shoot(base, args.query, out, args.width, args.height)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(timeout=15)
        size_kb = out.stat().st_size / 1024
        print(f"screenshot {out}: {args.width}x{args.height} px, {size_kb:.0f} KB; {summary}")


if __name__ == "__main__":
    main()
