"""Headless Debian chromium for the report page's test: a fresh profile per run, and the flags this
machine's closed network needs (no background connections, no component updates)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2400"]


def chromium() -> str:
    path = shutil.which("chromium")
    # CI's `make test` installs it (Makefile system-deps); a machine without it fails here on purpose
    assert path, "chromium is missing: `make setup` installs the Debian package chromium as root"
    return path


def _run(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)


def dump_dom(page: Path) -> str:
    """The DOM after the page's scripts ran."""
    r = _run(page, "--dump-dom")
    assert r.returncode == 0, r.stderr
    return r.stdout


def screenshot(page: Path, png: Path) -> None:
    r = _run(page, f"--screenshot={png}")
    assert r.returncode == 0 and png.is_file(), r.stderr
