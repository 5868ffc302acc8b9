"""No PHI in the audit store: run audited commands on PHI-carrying files, then scan the database bytes.

PHI sources: every Annex E attribute value in the headers of the inputs, and their file/folder names (the
burned_in_text_jsl names carry synthetic patient names, MRNs and dates). To cover a new audited command,
add its argv to COMMANDS (`infer` will go here once it exists).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from audit_phi import annex_e_tags, header_phi, leaks, name_phi

from medseg.audit.config import load_config
from medseg.cli.audited import audited
from medseg.cli.main import main

DEID = "deid"
INPUT_FOLDERS = ("dicom/mr_series_penn_prisma_phantom", "deid/tcia_pseudo_phi_mr/original", "deid/deid_data/humans")


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _inputs(shared: Path) -> list[Path]:
    return [*sorted((shared / DEID / "burned_in_text_jsl").glob("*.dcm")), *(shared / f for f in INPUT_FOLDERS)]


def _convert_all(shared: Path, out: Path) -> list[int]:
    codes = []
    for i, source in enumerate(_inputs(shared)):
        argv = ["convert", str(source), str(out / f"{i}.nii.gz")]
        if source.is_dir():
            uid = pydicom.dcmread(next(source.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
            argv += ["--series", str(uid)]
        codes.append(_run(argv))
    return codes


COMMANDS: dict[str, Callable[[Path, Path], list[int]]] = {"convert": _convert_all}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_phi_in_audit_store(shared: Path, tmp_path: Path, command: str) -> None:
    config = load_config()
    with audited("setup", {}):
        pass
    keep_wal_open = sqlite3.connect(config.db_path)  # holds the -wal file so its bytes are scanned too
    keep_wal_open.execute("SELECT COUNT(*) FROM events").fetchone()
    try:
        codes = COMMANDS[command](shared, tmp_path)
        assert 0 in codes, "no command succeeded: the scan would not cover successful events"
        assert (config.audit_dir / "audit.db-wal").stat().st_size > 0
        inputs = _inputs(shared)
        files = [p for src in inputs for p in ([src] if src.is_file() else sorted(src.rglob("*.dcm")))]
        phi = header_phi(files, annex_e_tags(shared)) | name_phi(files) | name_phi(inputs)
        assert len(phi) > 100
        assert leaks(config.audit_dir, phi) == []
        (n_events,) = keep_wal_open.execute("SELECT COUNT(*) FROM events").fetchone()
        assert n_events == 2 + 2 * len(codes)
    finally:
        keep_wal_open.close()


def test_the_leak_scanner_finds_a_planted_path(shared: Path, tmp_path: Path) -> None:
    """Negative control: a raw input path written into a scanned file is found."""
    source = sorted((shared / DEID / "burned_in_text_jsl").glob("*.dcm"))[0]
    (tmp_path / "planted.db").write_bytes(b"\x00prefix " + str(source).encode() + b"\x00")
    phi = name_phi([source]) | header_phi([source], annex_e_tags(shared))
    found = leaks(tmp_path, phi)
    assert str(source.resolve()) in found and source.name in found
    assert source.name.split("_")[0] in found  # the MRN-like leading token
