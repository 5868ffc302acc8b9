"""No PHI in the audit store: run audited commands on PHI-carrying files, then scan the database bytes.

PHI sources: every Annex E attribute value in the headers of the inputs, and their file/folder names (the
burned_in_text_jsl names carry synthetic patient names, MRNs and dates). To cover a new audited command
(e.g. `deid` once it exists), add a runner to COMMANDS that returns its exit codes and the PHI-carrying inputs.
"""

from __future__ import annotations

import os
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


def _convert_all(shared: Path, out: Path) -> tuple[list[int], list[Path]]:
    """`medseg convert` on every PHI-carrying input (most fail as 2D images: failure events are scanned too)."""
    codes = []
    inputs = _inputs(shared)
    for i, source in enumerate(inputs):
        argv = ["convert", str(source), str(out / f"{i}.nii.gz")]
        if source.is_dir():
            uid = pydicom.dcmread(next(source.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
            argv += ["--series", str(uid)]
        codes.append(_run(argv))
    return codes, inputs


def _phi_ct_series(shared: Path, dst: Path, slices: int = 24) -> Path:
    """Real CT slices (chaos) carrying the synthetic PHI of a deid file: its identifying header values and its
    file name (patient name, MRN, date) as folder and file names."""
    donor_path = next((shared / DEID / "burned_in_text_jsl").glob("*Scott_Kaufman*.dcm"))
    donor = pydicom.dcmread(donor_path, stop_before_pixels=True)
    folder = dst / donor_path.stem
    folder.mkdir(parents=True)
    copied = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "SeriesDate",
              "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StudyID")  # fmt: skip
    for n, src in enumerate(sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[:slices]):
        ds = pydicom.dcmread(src)
        for keyword in copied:
            if keyword in donor:
                setattr(ds, keyword, donor.data_element(keyword).value)
        ds.save_as(folder / f"{donor_path.stem}_{n:03d}.dcm")
    return folder


def _infer_on_phi_series(shared: Path, out: Path) -> tuple[list[int], list[Path]]:
    """`medseg infer` (small random-weight model, torch backend) on a CT series carrying PHI: a successful run."""
    from infer_fixtures import make_model_folder

    series = _phi_ct_series(shared, out / "input")
    model = make_model_folder(out / "model", channels=(4, 8), strides=(2,), roi=(64, 64, 32))
    argv = ["infer", str(series), "--out", str(out / "result"), "--model", str(model), "--backend", "torch"]
    codes = [_run(argv)]
    seg = list((out / "result").rglob("seg.dcm"))
    assert seg and str(pydicom.dcmread(seg[0]).PatientName) == str(pydicom.dcmread(next(series.iterdir())).PatientName)
    codes.append(_run([*argv, "--strict", "--overwrite"]))  # rejected (random weights): its folder keeps no SEG
    return codes, [series]


COMMANDS: dict[str, Callable[[Path, Path], tuple[list[int], list[Path]]]] = {
    "convert": _convert_all,
    "infer": _infer_on_phi_series,
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_phi_in_audit_store(shared: Path, tmp_path: Path, command: str) -> None:
    config = load_config()
    with audited("setup", {}):
        pass
    keep_wal_open = sqlite3.connect(config.db_path)  # holds the -wal file so its bytes are scanned too
    keep_wal_open.execute("SELECT COUNT(*) FROM events").fetchone()
    try:
        codes, inputs = COMMANDS[command](shared, tmp_path)
        assert 0 in codes, "no command succeeded: the scan would not cover successful events"
        assert (config.audit_dir / "audit.db-wal").stat().st_size > 0
        files = [p for src in inputs for p in ([src] if src.is_file() else sorted(src.rglob("*.dcm")))]
        phi = header_phi(files, annex_e_tags(shared)) | name_phi(files) | name_phi(inputs)
        assert len(phi) > 50
        # Every audit record holds the id of the process that ran the command (here this one), which is not PHI;
        # a 5-digit header value once equalled it by chance (CI, pid 19638), so that one number is not searched for.
        phi.discard(str(os.getpid()))
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
