"""The PACS service and `medseg batch` serve every organ the model is validated for, one SEG segment each, checked
as `medseg infer --organ` checks them (before: one organ per service, and `spleen` was refused because the card's
main organ is the liver)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import chaos_files, make_study
from pydantic import ValidationError

from medseg.errors import UsageError
from medseg.pacs.config import Destination, PacsConfig
from medseg.pacs.segment import load_segmenter


def _config(tmp_path: Path, organs: list[str]) -> PacsConfig:
    return PacsConfig(storage=tmp_path, destination=Destination(folder=tmp_path / "seg"), organs=organs)


def test_config_takes_several_distinct_organs_and_refuses_none_or_repeats(tmp_path: Path) -> None:
    assert _config(tmp_path, [" Liver", "spleen"]).organs == ["liver", "spleen"]
    for bad in ([], ["liver", "LIVER"], ["liver", " "]):
        with pytest.raises(ValidationError, match="distinct organ names"):
            _config(tmp_path, bad)


def test_segmenter_serves_the_validated_organs_and_names_the_others() -> None:
    assert load_segmenter("spleen").organs == ("spleen",)
    assert load_segmenter(["liver", "spleen"]).organs == ("liver", "spleen")
    with pytest.raises(UsageError, match="no validation figures for kidney"):
        load_segmenter(["liver", "kidney"])
    with pytest.raises(UsageError, match="has no brain output"):
        load_segmenter(["liver", "brain"])
    with pytest.raises(UsageError, match="no default model for organ 'brain': no installed model validates it"):
        load_segmenter("brain")


@pytest.mark.slow
def test_batch_with_two_organs_writes_one_seg_with_a_segment_each(shared: Path, tmp_path: Path) -> None:
    studies = tmp_path / "in"
    uid, _ = make_study(chaos_files(shared), studies / "a", range(78), "organs-a")
    cmd = [sys.executable, "-m", "medseg", "batch", str(studies), "--organ", "liver,spleen", "--out",
           str(tmp_path / "out")]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    segs = list((tmp_path / "out" / "seg").rglob("*.dcm"))
    assert len(segs) == 1
    seg = pydicom.dcmread(segs[0])
    assert seg.StudyInstanceUID == uid
    labels = [s.SegmentLabel.lower() for s in seg.SegmentSequence]
    assert labels == ["liver", "spleen"]
    per_frame = seg.PerFrameFunctionalGroupsSequence
    assert {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in per_frame} == {1, 2}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("1 sent, 0 quarantined, 0 failed of 1 studies")
    assert list((tmp_path / "out" / "seg").rglob("*.dcm")) == segs


@pytest.mark.parametrize(("organ", "message"), [("liver,liver", "invalid --organ"),
                                                ("liver,kidney", "no validation figures for kidney")])  # fmt: skip
def test_batch_refuses_bad_organs_in_one_line_with_exit_2(tmp_path: Path, organ: str, message: str) -> None:
    (tmp_path / "in").mkdir()
    cmd = [sys.executable, "-m", "medseg", "batch", str(tmp_path / "in"), "--organ", organ, "-o", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
