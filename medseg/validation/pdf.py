"""report.pdf printed from report.html by headless Chromium: the same page a person reads, when Chromium is there."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from medseg.errors import ProcessingError, UsageError
from medseg.validation.report import HTML, PDF

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str:
    """Path of a Chromium-family browser; UsageError naming what to install when none is found."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise UsageError("no Chromium found for the PDF", hint="Install chromium (apt-get install chromium) or omit --pdf.")


def write_pdf(folder: Path, timeout_s: float = 120.0, html: Path | None = None, out: Path | None = None) -> Path:
    """Print FOLDER/report.html (or `html`, a file in FOLDER) to FOLDER/report.pdf (or `out`); previews load from
    the folder, no network."""
    browser = find_browser()
    out = out or folder / PDF
    page = (html or folder / HTML).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
               f"--user-data-dir={profile}", f"--print-to-pdf={out}", page]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProcessingError(f"Chromium could not print the PDF: {exc}", path=out) from exc
    if proc.returncode != 0 or not out.is_file() or out.read_bytes()[:5] != b"%PDF-":
        last = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else None
        raise ProcessingError(f"Chromium could not print the PDF (exit {proc.returncode})", path=out, hint=last)
    return out
