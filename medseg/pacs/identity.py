"""Idempotent results: the SEG's Series and SOP Instance UIDs derived from the job's idempotency key.

Key = (StudyInstanceUID, source SeriesInstanceUID, organ set, model weights digest, software version, the source
instances the SEG references, and the study's generation). A re-run of the same job gives the same UIDs, so a re-send
is the same instance, never a second copy. The SEG series UID leaves the instances and the generation out: a SEG of
other source instances (late slices, a slice removed) or of other content under the same SOP Instance UIDs (a study
sent again with the patient's name corrected: a new generation) is a new instance, with a SOP Instance UID of its
own, in the same SEG series; two different objects never share one SOP Instance UID (a PACS that does not overwrite
would keep the first and drop the second silently).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import ProcessingError
from medseg.pacs.storage import durable_write


@dataclass(frozen=True)
class SegIdentity:
    """The key and the UIDs derived from it."""

    key: str
    series_uid: str
    sop_uid: str
    study_uid: str
    source_series_uid: str


def idempotency_key(
    study_uid: str, series_uid: str, organs: list[str], weights_sha256: str, software: str, instances: list[str],
    generation: int | None = None,
) -> str:
    """SHA-256 of the canonical JSON of the parts (the source instances' SOP Instance UIDs sorted); `generation` (the
    study's, None for the SEG series key) is what tells apart two SEGs of the same instance UIDs but other content."""
    parts: list[object] = [study_uid, series_uid, sorted(organs), weights_sha256, software, sorted(instances)]
    if generation is not None:
        parts.append(generation)
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def seg_source(ds: object) -> tuple[str, str, list[str]]:
    """(StudyInstanceUID, source SeriesInstanceUID, referenced SOP Instance UIDs) of a SEG dataset; raises
    AttributeError/IndexError when the SEG lacks them."""
    series = ds.ReferencedSeriesSequence[0]  # type: ignore[attr-defined]
    instances = [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence]
    return str(ds.StudyInstanceUID), str(series.SeriesInstanceUID), instances  # type: ignore[attr-defined]


def derived_uid(key: str, role: str) -> str:
    """A '2.25.<integer>' UID (PS3.5 B.2) from 128 bits of SHA-256(key, role): stable and unique per role."""
    digest = hashlib.sha256(f"{key}/{role}".encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def stamp_seg(seg: Path, organs: list[str], weights_sha256: str, software: str, generation: int) -> SegIdentity:
    """Give the SEG file of the study's `generation` its derived Series/SOP Instance UIDs (rewritten durably)."""
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(seg)
        study, source, instances = seg_source(ds)
    except (OSError, AttributeError, IndexError, pydicom.errors.InvalidDicomError) as exc:
        raise ProcessingError(f"cannot read the SEG to stamp it: {exc}", path=seg) from exc
    key = idempotency_key(study, source, organs, weights_sha256, software, instances, generation)
    series_key = idempotency_key(study, source, organs, weights_sha256, software, [])
    ident = SegIdentity(key, derived_uid(series_key, "series"), derived_uid(key, "sop"), study, source)
    ds.SeriesInstanceUID = ident.series_uid
    ds.SOPInstanceUID = ident.sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = ident.sop_uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    durable_write(seg, buf.getvalue())
    return ident
