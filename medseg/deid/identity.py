"""The attributes that say what was done: pseudonyms, PatientIdentityRemoved, the CID 7050 method codes, UIDs
for objects whose UIDs were empty, and a new file meta group."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from medseg.deid.engine import FileContext
from medseg.deid.table import load_cid7050, load_table
from medseg.deid.values import value_of

METHOD_PREFIX = "medseg deid"


def method_names(options: frozenset[str], pixels_cleaned: bool) -> list[str]:
    """Profile and option names in CID 7050 order (Clean Pixel Data only when pixels were really cleaned)."""
    chosen = set(options) - {"clean-pixel-data"}
    if pixels_cleaned:
        chosen.add("clean-pixel-data")
    return ["basic", *[name for name in load_cid7050() if name in chosen]]


def set_identity(out: Dataset, original: Dataset, ctx: FileContext, pixels_cleaned: bool) -> None:
    """Pseudonyms, de-identification method attributes and UIDs for empty Study/Series/SOP Instance UIDs."""
    out.PatientName = ctx.pseudonym
    out.PatientID = ctx.pseudonym
    out.PatientIdentityRemoved = "YES"
    names = method_names(ctx.options, pixels_cleaned)
    codes = load_cid7050()
    edition = load_table().edition
    out.DeidentificationMethod = [f"{METHOD_PREFIX} PS3.15 E.1-1 {edition}"] + [codes[n][1][:64] for n in names]
    items = []
    for name in names:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = codes[name][0], "DCM", codes[name][1]
        items.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(items)
    dates = ctx.options & {"retain-dates-full", "retain-dates-shifted"}
    out.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if "retain-dates-full" in dates else "MODIFIED" if dates else "REMOVED"
    )
    if pixels_cleaned:
        out.BurnedInAnnotation = "NO"
    _fill_empty_uids(out, original, ctx)


def _fill_empty_uids(out: Dataset, original: Dataset, ctx: FileContext) -> None:
    """Objects written with empty UIDs (seen in real exports) get UIDs derived from their other attributes."""
    if "retain-uids" in ctx.options:
        return
    study = str(original.get("StudyInstanceUID", "") or "")
    if not str(value_of(out, "StudyInstanceUID", "") or ""):
        parts = [ctx.patient_key] + [
            str(original.get(k, "")) for k in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID")
        ]
        out.StudyInstanceUID = ctx.mapper.derived_uid("study", *parts)
    if not str(value_of(out, "SeriesInstanceUID", "") or ""):
        keys = ("SeriesNumber", "Modality", "FrameOfReferenceUID", "SeriesDescription", "SeriesDate", "SeriesTime")
        out.SeriesInstanceUID = ctx.mapper.derived_uid(
            "series", study, str(value_of(out, "StudyInstanceUID")), *[str(original.get(k, "")) for k in keys]
        )
    if not str(value_of(out, "SOPInstanceUID", "") or ""):
        meta = getattr(original, "file_meta", None)
        media = str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta is not None else ""
        out.SOPInstanceUID = (
            ctx.mapper.uid(media)
            if media
            else ctx.mapper.derived_uid(
                "instance",
                str(value_of(out, "SeriesInstanceUID")),
                str(original.get("InstanceNumber", "")),
                str(original.get("AcquisitionNumber", "")),
            )
        )


def new_file_meta(out: Dataset, original: Dataset, transfer_syntax: str | None) -> FileMetaDataset:
    """A fresh file meta group: only class, instance, transfer syntax and this writer's implementation."""
    old = getattr(original, "file_meta", None)
    meta = FileMetaDataset()
    sop_class = value_of(out, "SOPClassUID") or (old.get("MediaStorageSOPClassUID") if old is not None else None)
    meta.MediaStorageSOPClassUID = UID(str(sop_class or "1.2.840.10008.5.1.4.1.1.7"))
    meta.MediaStorageSOPInstanceUID = UID(str(value_of(out, "SOPInstanceUID")))
    meta.TransferSyntaxUID = UID(transfer_syntax or ExplicitVRLittleEndian)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
