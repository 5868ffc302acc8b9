"""dicom3tools' dciodvfy finds no new errors in de-identified files compared with their originals."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deid_fixtures import run_deid

FILES = (
    "dicom/pydicom/CT_small.dcm",
    "dicom/pydicom/MR_small.dcm",
    "dicom/mr_series_penn_prisma_phantom/6_anat_acq_vnavsetter_T1w_031.dcm",
    "dicom/dicom2nifti/philips_enhanced/anatomical/001/IM-0001-0170-0001.dcm",
    "dicom/highdicom/sr_document_with_multiple_groups.dcm",
    "dicom/highdicom/sm_annotations.dcm",
    "dicom/rtstruct/rt-utils/mock_data/rt.dcm",
    "dicom/seg/dcmqi/segmentations/liver.dcm",
    "deid/tcia_pseudo_phi_mr/original/1-01.dcm",
    "deid/deid_data/humans/ctbrain1.dcm",
)


def errors(path: Path) -> set[str]:
    """dciodvfy's error lines with values, UIDs and numbers masked (so equal problems compare equal)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    return {re.sub(r'"[^"]*"|[\d.]+', "#", line) for line in (run.stdout + run.stderr).splitlines()
            if line.startswith("Error")}  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_no_new_dciodvfy_errors(shared: Path, tmp_path: Path, name: str) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy (dicom3tools) is installed by scripts/setup.sh"
    src = tmp_path / "in"
    src.mkdir()
    original = shared / name
    (src / original.name).write_bytes(original.read_bytes())
    record = run_deid(src, tmp_path / "out").records[0]
    assert record.status in ("written", "quarantined")
    added = errors(tmp_path / "out" / record.output) - errors(original)
    assert not added, sorted(added)
