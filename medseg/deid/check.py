"""`medseg deid check ORIGINAL DEIDENTIFIED`: the leak check over whole trees, file and folder names and the OCR of
every released image.

The release is everything under DEIDENTIFIED except the run's own top-level records: `deid-manifest.json`,
`.deid-state/` (resume journal) and `quarantine/` (files withheld, counted). Anything else is searched, hidden
files and temporary names included, and every component of every path is searched for the originals' values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from medseg.deid.keyed import KeyedMapper
from medseg.deid.leakcheck import (
    Finding,
    Matcher,
    Matchers,
    Retention,
    collect,
    normalise,
    pixel_span,
    read_any,
    scan_dataset,
    scan_raw,
)
from medseg.deid.retained import SHIFT_OPTION, options_in, own_values, retention, shifted_dates, with_shifted_dates
from medseg.deid.runner import MANIFEST, QUARANTINE, STATE_DIR, discover, input_digest
from medseg.errors import UsageError
from medseg.io.atomic import is_unfinished_write
from medseg.keys import secret_id


@dataclass
class CheckResult:
    """Findings (no values), what was checked, and what was not (quarantined files are never released)."""

    findings: list[Finding] = field(default_factory=list)  # real leaks: any one fails the check
    kept: list[Finding] = field(default_factory=list)  # attributes' own values kept on purpose by an option
    files_checked: int = 0
    originals_used: int = 0
    identifying_values: int = 0
    quarantined: int = 0
    ocr_files: int = 0
    unchecked: list[tuple[str, str]] = field(default_factory=list)  # de-identified entries that could not be read
    # (symlinked folder, pipe, unreadable folder): the check cannot prove them clean, so it fails
    originals_skipped: int = 0  # entries of ORIGINAL never opened (their values are not searched for)
    # released images whose pixels were not OCRed (--no-ocr, OCR unavailable, undecodable): (file, why); the check
    # cannot certify them, so it does not pass (exit 6 when nothing else failed)
    pixels_unchecked: list[tuple[str, str]] = field(default_factory=list)
    # released files that are neither readable DICOM, nor text, nor an image OCR could read (an archive, a DICOM
    # file the reader refuses): (file, why); only their raw bytes were searched, so they are not proved clean (exit 6)
    files_unchecked: list[tuple[str, str]] = field(default_factory=list)


def _manifest(deid: Path) -> dict:
    path = deid / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError("the run manifest is not valid JSON", path=path, hint="Re-run medseg deid.") from exc
    problem = _manifest_problem(manifest)
    if problem:
        raise UsageError(f"the run manifest is not one `medseg deid` writes ({problem})", path=path,
                         hint="Re-run medseg deid, or remove the file to check the release without it.")  # fmt: skip
    return manifest


def _manifest_problem(manifest: object) -> str | None:
    """What makes a parsed manifest unusable by the check (a JSON list, wrong types: 'internal error', exit 4,
    before; review 18b #10), or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    options, files = manifest.get("options", []), manifest.get("files", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        return "'options' is not a list of names"
    if not isinstance(manifest.get("key_id", ""), str | None):
        return "'key_id' is not text"
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return "'files' is not a list of records"
    for record in files:
        if not all(isinstance(record.get(k, ""), str | None) for k in ("output", "input_digest", "status")):
            return "a file record's output, input_digest or status is not text"
        pixels = record.get("pixels", {})
        if not isinstance(pixels, dict) or not isinstance(pixels.get("regions", []), list):
            return "a file record's pixels are not a record with a list of regions"
    return None


def _rel(deid: Path, path: Path) -> str:
    """The path of an output relative to the de-identified folder (its name when the check is given one file)."""
    return path.relative_to(deid).as_posix() if deid.is_dir() else path.name


def _place(deid: Path, path: Path) -> str:
    """'released', 'quarantine' or 'run records': only the run's own top-level manifest, state folder and quarantine
    folder are not part of the release (a manifest, state folder or quarantine folder deeper down is released)."""
    if not deid.is_dir():
        return "released"
    parts = path.relative_to(deid).parts
    if parts == (MANIFEST,) or (len(parts) > 1 and parts[0] == STATE_DIR):
        return "run records"
    return "quarantine" if len(parts) > 1 and parts[0] == QUARANTINE else "released"


def _released(deid: Path, path: Path) -> bool:
    """Whether `path` is part of what is released (quarantined files and the run's records are not)."""
    return _place(deid, path) == "released"


def text_hits(text: str, matchers: Matchers, uids: bool = True) -> list[str]:
    """Identifying values found in a piece of text (a name, recognised OCR text): whole values and name parts."""
    norm = normalise(text)
    hits = [*matchers.strong.found(norm), *matchers.parts.found(norm)]
    return hits + list(matchers.uids.found(text)) if uids else hits


# Letters OCR reads for digits and back ('ZQ7766554433' read as 'ZO7766554433'): both sides folded for the search
_OCR_FOLD = str.maketrans("OQDILZSBG", "000112586")
MIN_FOLDED = 6


def ocr_matcher(matchers: Matchers) -> Matcher:
    """Identifying values (whole ones, name parts, free text) of 6+ letters or digits with OCR's usual confusions
    folded (`_OCR_FOLD`), for recognised text."""
    values = {**matchers.parts.kinds, **matchers.strong.kinds}
    folded = {v.translate(_OCR_FOLD): k for v, k in values.items() if len(v.replace(" ", "")) >= MIN_FOLDED}
    return Matcher(folded)


def ocr_hits(text: str, matchers: Matchers, folded: Matcher) -> list[str]:
    """Identifying values (or their folded forms) in text recognised by OCR."""
    return text_hits(text, matchers, uids=False) + list(folded.found(normalise(text).translate(_OCR_FOLD)))


def _retained_uids(ds: object, declared: frozenset[str]) -> frozenset[str]:
    """The output's own study, series and instance UIDs when it declares Retain UIDs: the path is built from them, and
    a path component that is one of them is kept by the option like the header value (whose own check stays)."""
    if ds is None or "retain-uids" not in declared:
        return frozenset()
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    return frozenset(str(getattr(ds, k, "") or "") for k in keys) - {""}


def name_findings(
    rel: str, matchers: Matchers, seen: dict[str, str | None], retained: frozenset[str] = frozenset()
) -> list[Finding]:
    """Findings in the components of a released path (folder and file names, with and without the extension);
    `seen` caches each component's kind across files; components that are `retained` UIDs (with or without '.dcm')
    are kept by Retain UIDs (a device serial inside a retained UID is no leak of the path: review 18b #5)."""
    for component in rel.split("/"):
        if component in retained or (Path(component).stem in retained and component.endswith(".dcm")):
            continue
        if component not in seen:
            hits = [h for text in {component, Path(component).stem} for h in text_hits(text, matchers)]
            seen[component] = matchers.kind(hits[0]) if hits else None
        if seen[component] is not None:
            return [Finding(rel, "its file or folder name", str(seen[component]))]
    return []


def check_tree(
    original: Path, deid: Path, ocr: bool = True, on_file: Callable[[Path], None] | None = None,
    matchers: Matchers | None = None, secret: bytes | None = None,
) -> CheckResult:  # fmt: skip
    """Search every released file (and its path) for every identifying value of the originals; OCR every released
    image for them (and for any text left in the regions the run blanked). UsageError when no original is read,
    and, given the run's `secret`, when an output's original (by the manifest's keyed digest) is not in ORIGINAL."""
    if not original.exists() or not deid.exists():
        missing = original if not original.exists() else deid
        raise UsageError("not found", path=missing, hint="Pass the original and the de-identified folder.")
    manifest = _manifest(deid)
    options = frozenset(manifest.get("options", []))
    allowed = options  # without a manifest no option is granted: a file's own claims are not evidence
    originals = discover(original)
    matchers = matchers or collect(originals.files, options, with_sources=allowed is None or bool(allowed))
    sources = _sources_of_outputs(originals.files, manifest, secret)
    _require_originals(original, matchers, manifest, sources, secret)
    files, skipped = _entries(deid)
    result = CheckResult(originals_used=matchers.files, originals_skipped=len(originals.skipped))
    result.unchecked = [(_rel(deid, path), why) for path, why in skipped if _released(deid, path)]
    result.identifying_values = len(matchers.strong.kinds) + len(matchers.parts.kinds) + len(matchers.uids.kinds)
    records = [f for f in manifest.get("files", []) if f.get("output")]
    regions = {f["output"]: (f.get("pixels") or {}).get("regions") or [] for f in records}
    digests = {f["output"]: f.get("output_sha256") for f in records}
    own: dict[int, list[str]] | None = None
    names: dict[str, str | None] = {}
    by_pixels: dict[str, Path] | None = None
    folded = ocr_matcher(matchers)
    ocr_off = None if ocr else "--no-ocr"
    ocr_off = ocr_off or _ocr_unavailable()
    if secret is not None and not manifest.get("files"):
        released = {_rel(deid, p): p for p in files if _released(deid, p)}
        _require_keyed_uids(original, originals.files, _instance_uids(released), KeyedMapper(secret))
    elif manifest.get("files"):
        unlisted = _unlisted(original, deid, files, manifest, originals.files, secret)
        result.unchecked += [(rel, UNLISTED) for rel in unlisted]
    for path in files:
        place = _place(deid, path)
        result.quarantined += place == "quarantine"
        if place != "released":
            continue
        rel = _rel(deid, path)
        if on_file is not None:
            on_file(path)
        data = path.read_bytes()
        _require_written(path, data, digests.get(rel))
        ds = read_any(path, data)
        declared = options_in(ds, allowed) if ds is not None else frozenset()
        result.findings.extend(name_findings(rel, matchers, names, _retained_uids(ds, declared)))
        result.files_checked += 1
        kept: dict[str, str] = {}
        found = []
        if ds is not None:
            retained = None
            if declared and rel not in sources and secret is None:
                by_pixels = _originals_by_pixels(originals.files) if by_pixels is None else by_pixels
                match = by_pixels.get(_pixel_digest(ds, data))
                sources.update({rel: match} if match is not None else {})
            if declared:
                own = own_values(matchers.sources) if own is None else own
                patient = collect([sources[rel]], options).sources if rel in sources else None
                retained = retention(declared, matchers.sources, own, patient)
            if SHIFT_OPTION in declared:
                source = read_any(sources[rel]) if rel in sources else None
                retained = with_shifted_dates(retained, shifted_dates(source, ds) if source is not None else {})
            if retained is not None and "retain-uids" in declared:
                retained = _meta_uid_as_sop_uid(retained, ds)
            found += scan_dataset(ds, matchers, rel, retained, kept)
        found += scan_raw(data, matchers, rel, kept, pixel_span(ds, data))
        result.findings.extend(f for f in found if f.kept_by is None)
        result.kept.extend(f for f in found if f.kept_by is not None)
        if ds is None:
            _check_other_file(rel, data, result, ocr_off, (matchers, folded))
            continue
        if _recording(ds):
            result.files_unchecked.append((rel, "an audio recording: what it says is not checked"))
            continue
        if _nested_pixels(ds):
            result.pixels_unchecked.append((rel, "pixel data inside a sequence item: not OCRed"))
        if not _has_image(ds):
            continue
        if _float_pixels(ds):
            result.pixels_unchecked.append((rel, "Float or Double Float Pixel Data: not OCRed"))
            continue
        if _unused_bits_set(ds):
            where = "(7FE0,0010) bits outside BitsStored"
            result.findings.append(Finding(rel, where, "unused pixel bits holding data"))
        if ocr_off:
            result.pixels_unchecked.append((rel, ocr_off))
            continue
        try:
            result.findings.extend(_ocr_image(ds, regions.get(rel) or [], rel, matchers, folded))
        except Exception as exc:  # a decoder failure: these pixels cannot be proven clean
            result.pixels_unchecked.append((rel, f"pixel data cannot be decoded ({type(exc).__name__})"))
            continue
        result.ocr_files += 1
    return result


SOP_INSTANCE_UID, MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00080018, 0x00020003


def _meta_uid_as_sop_uid(retained: Retention, ds: pydicom.Dataset) -> Retention:
    """Under Retain UIDs, MediaStorageSOPInstanceUID equal to the file's own kept SOPInstanceUID is judged as that
    SOPInstanceUID: the run writes the file meta from the kept instance UID, so it need not be the original's meta
    value, and a study date inside it was a finding there while excused in (0008,0018) (review 20 #7)."""
    sop = str(ds.get("SOPInstanceUID", "") or "").strip("\0 ")

    def judged(tag: int, hits: list[str], whole: set[str]) -> str | None:
        if tag == MEDIA_STORAGE_SOP_INSTANCE_UID and sop and sop in whole:
            return retained(SOP_INSTANCE_UID, hits, whole)
        return retained(tag, hits, whole)

    return judged


def _head(path: Path) -> pydicom.Dataset | None:
    """The SOP Instance UID and de-identification method of a DICOM file (None when pydicom cannot read it)."""
    tags = ["SOPInstanceUID", "DeidentificationMethodCodeSequence"]
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags, force=True)
    except Exception:  # not DICOM: left to the search of its bytes
        return None


def _instance_uids(released: dict[str, Path]) -> dict[str, tuple[str, bool]]:
    """Released DICOM file -> (its SOP Instance UID, whether it claims Retain UIDs)."""
    found = {}
    for rel, path in released.items():
        ds = _head(path)
        if ds is not None and len(ds):
            found[rel] = (str(ds.get("SOPInstanceUID", "") or ""), "retain-uids" in options_in(ds))
    return found


def _require_keyed_uids(
    original: Path, originals: list[Path], released: dict[str, tuple[str, bool]], mapper: KeyedMapper
) -> None:
    """With the run's key but no manifest (the release as docs/deid.md defines it: study folders only), pair each
    released DICOM file with an original by its SOP Instance UID: the original's UID mapped with the key (its own
    UID when the file claims Retain UIDs). A released file with no such original means ORIGINAL or the key is not
    the run's, or a file that was never de-identified by this run: refused, exit 2 (review 18b #4: it passed)."""
    own: set[str] = set()
    unknown = 0  # originals without a SOP Instance UID get one derived from other attributes: not recomputed here
    for path in originals:
        ds = _head(path)
        if ds is None:
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        own.add(uid) if uid else None
        unknown += not uid
    mapped = {mapper.uid(u) for u in own}
    missing = [rel for rel, (uid, kept) in released.items() if uid not in mapped and not (kept and uid in own)]
    if len(missing) > unknown:
        raise UsageError(f"{len(missing)} of {len(released)} released DICOM file(s) have no original in ORIGINAL under "
                         f"this key (first: {missing[0]}): the wrong folder or key, or a file this run did not "
                         "write", path=original, hint="Pass the run's ORIGINAL and --key-file; remove files the run "
                         "did not write from the release.")  # fmt: skip


UNLISTED = (
    "a released DICOM file the run manifest does not list (not written by this run: its original's values "
    "are not searched)"
)


def _unlisted(
    original: Path, deid: Path, files: list[Path], manifest: dict, originals: list[Path], secret: bytes | None
) -> list[str]:
    """Released DICOM files the manifest does not list. Given the run's key each must pair with an original by its
    keyed SOP Instance UID, as without a manifest, else the check is refused (exit 2); without the key they are
    returned, and the check fails on them (review 20 #1: an earlier run's output of another input was searched only
    for this ORIGINAL's values, and a planted name in it passed)."""
    listed = {f["output"] for f in manifest.get("files", []) if f.get("output")}
    unlisted = {_rel(deid, p): p for p in files if _released(deid, p) and _rel(deid, p) not in listed}
    found = _instance_uids(unlisted)
    if found and secret is not None:
        _require_keyed_uids(original, originals, found, KeyedMapper(secret))
        return []
    return sorted(found)


_ARCHIVES = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"\x28\xb5\x2f\xfd")
_PICTURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*", b"BM")


def _is_text(data: bytes) -> bool:
    """Whether a file is plain text (UTF-8 without NUL, or UTF-16 with its BOM): its raw-byte search covers it."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def other_file_kind(data: bytes) -> str:
    """What a released file that is not readable DICOM is: 'text' (searched as bytes), 'picture' (OCRed), else
    why its content is not proved clean by a search of its bytes (review 18b #3: an archive of the originals, a
    released DICOM with its SOP UIDs removed passed as '0 leaks')."""
    if _is_text(data):
        return "text"
    if data.startswith(_PICTURES):
        return "picture"
    if data.startswith(_ARCHIVES) or data[257:262] == b"ustar":
        return "an archive or compressed file: its content is not searched"
    return "neither readable DICOM nor text: only its raw bytes were searched"


def _check_other_file(
    rel: str, data: bytes, result: CheckResult, ocr_off: str | None, search: tuple[Matchers, Matcher]
) -> None:
    """A released file that is not readable DICOM: text is done (its bytes were searched); a picture is OCRed like
    a released image; anything else is not checked (exit 6 when nothing else failed)."""
    kind = other_file_kind(data)
    if kind == "text":
        return
    if kind != "picture":
        result.files_unchecked.append((rel, kind))
        return
    if ocr_off:
        result.pixels_unchecked.append((rel, ocr_off))
        return
    try:
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            picture = np.asarray(image.convert("RGB"))
        result.findings.extend(_ocr_picture(picture, rel, *search))
    except Exception as exc:  # an image PIL cannot decode: not proved clean
        result.files_unchecked.append((rel, f"an image that cannot be decoded ({type(exc).__name__})"))
        return
    result.ocr_files += 1


def _ocr_picture(picture: object, name: str, matchers: Matchers, folded: Matcher) -> list[Finding]:
    """OCR of a released picture (PNG, JPEG...): recognised text holding an identifying value is a finding."""
    from medseg.deid.ocr import read_text

    findings = []
    for box, text in read_text(picture):  # type: ignore[arg-type]
        hits = ocr_hits(text, matchers, folded)
        if hits:
            where = f"pixels, box {box.x0},{box.y0}-{box.x1},{box.y1}"
            findings.append(Finding(name, where, f"burned-in {folded.kinds.get(hits[0]) or matchers.kind(hits[0])}"))
    return findings


def _entries(deid: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files of the de-identified tree to search, and entries that cannot be read. Unlike an input walk, files named
    like an unfinished write ('.tmp-...') are searched: in a release they are files like any other."""
    walk = discover(deid)
    temporary = [p for p, _ in walk.skipped if is_unfinished_write(p.name) and p.is_file() and not p.is_symlink()]
    skipped = [(p, why) for p, why in walk.skipped if p not in temporary]
    return sorted(walk.files + temporary), skipped


def _ocr_unavailable() -> str | None:
    """Why OCR cannot run here, or None."""
    from medseg.deid.ocr import available

    return available()


def _unused_bits_set(ds: object) -> bool:
    """Native or RLE pixel data with bits set outside BitsStored/HighBit that are neither zero nor sign copies: room
    for an embedded overlay that no rendering shows; `medseg deid` clears them, so in a release they are a finding."""
    from pydicom.uid import ExplicitVRBigEndian

    from medseg.deid.pixels import unused_bits_hold_data

    meta = getattr(ds, "file_meta", None)
    big = meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRBigEndian
    return unused_bits_hold_data(ds, big)  # type: ignore[arg-type]


def _recording(ds: object) -> bool:
    """A released voice or audio waveform object (review 20 #5: its recording was released and certified), its class
    also from the file meta, or waveform samples of an unknown class (re-probe 20 #6)."""
    from medseg.deid.pixels import is_recording

    return is_recording(ds)  # type: ignore[arg-type]


def _nested_pixels(ds: object) -> bool:
    """Pixel, Float or Double Float Pixel Data inside a sequence item of a released object: the run removes it, so
    one found there was never scanned, and the OCR reads top-level pixels only (re-probe 20 #7)."""
    nested = (0x7FE00010, 0x7FE00008, 0x7FE00009)
    return any(tag in item or _nested_pixels(item) for elem in ds if elem.VR == "SQ"  # type: ignore[attr-defined]
               for item in elem.value or [] for tag in nested)  # fmt: skip


def _float_pixels(ds: object) -> bool:
    """Float or Double Float Pixel Data in a released object (never OCRed: review 20 #4)."""
    from medseg.deid.pixels import has_float_pixels

    return has_float_pixels(ds)  # type: ignore[arg-type]


def _has_image(ds: object) -> bool:
    """A released object with pixels meant to be looked at (not a SEG or RT Dose, whose pixels are computed)."""
    from medseg.deid.pixels import COMPUTED_SOP_CLASSES

    pixels = "PixelData" in ds or _float_pixels(ds)  # type: ignore[operator]
    return pixels and str(getattr(ds, "SOPClassUID", "")) not in COMPUTED_SOP_CLASSES


def _sources_of_outputs(originals: list[Path], manifest: dict, secret: bytes | None) -> dict[str, Path]:
    """Output (relative path) -> the original it was made from, matched by the manifest's keyed input digest (so
    only with the run's secret; empty without it)."""
    if secret is None or not manifest.get("files"):
        return {}
    mapper = KeyedMapper(secret)
    by_digest = {input_digest(mapper, hashlib.sha256(p.read_bytes()).hexdigest()): p for p in originals}
    return {
        f["output"]: by_digest[f["input_digest"]]
        for f in manifest.get("files", [])
        if f.get("output") and f.get("input_digest") in by_digest
    }


def _pixel_digest(ds: object, data: bytes) -> str:
    """SHA-256 of a file's Pixel Data value bytes ('' when none or unknown)."""
    span = pixel_span(ds, data)  # type: ignore[arg-type]
    return "" if span is None else hashlib.sha256(data[span[0] : span[1]]).hexdigest()


def _originals_by_pixels(originals: list[Path]) -> dict[str, Path]:
    """Pixel Data digest -> the one original holding those exact pixel bytes (digests shared by several dropped):
    without the run's secret the check pairs an output with its original this way (pixels are copied unchanged
    unless cleaned), to tell a shifted date from a copied one under Retain Modified Dates."""
    found: dict[str, Path | None] = {}
    for path in originals:
        data = path.read_bytes()
        digest = _pixel_digest(read_any(path, data), data)
        if digest:
            found[digest] = path if digest not in found else None
    return {d: p for d, p in found.items() if p is not None}


def _require_written(path: Path, data: bytes, expected: str | None) -> None:
    """Refuse a released file the manifest lists whose bytes are not the ones the run wrote (its SHA-256 differs
    from the manifest's output_sha256): another file under a listed name is not the release the check is asked
    about (re-probe 20 #8: another patient's original copied over a listed name passed)."""
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise UsageError("this released file is not the one the run wrote (its SHA-256 differs from the manifest's "
                         "output_sha256)", path=path,
                         hint="Restore the release the run wrote, or de-identify again into a new OUTPUT.")  # fmt: skip


def _require_originals(
    original: Path, matchers: Matchers, manifest: dict, sources: dict[str, Path], secret: bytes | None
) -> None:
    """Refuse a check that cannot mean anything: no readable original (every value search then passes), or, with
    the run's secret, a manifest output whose original is not in ORIGINAL (the wrong folder was given)."""
    if matchers.files == 0:
        raise UsageError("no readable DICOM original: nothing to search for", path=original,
                         hint="Pass as ORIGINAL the file or folder that was de-identified.")  # fmt: skip
    if secret is None or not manifest:
        return
    if manifest.get("key_id") != secret_id(secret):
        raise UsageError("the key is not the one the run used (key_id differs from the manifest's)", path=original,
                         hint="Pass the run's --key-file, or leave it out.")  # fmt: skip
    outputs = [f["output"] for f in manifest.get("files", []) if f.get("output") and f.get("status") == "written"]
    missing = [o for o in outputs if o not in sources]
    if missing:
        raise UsageError(f"{len(missing)} of {len(outputs)} released file(s) of the run have no original in ORIGINAL "
                         "(by the manifest's keyed digests)", path=original,
                         hint="Pass as ORIGINAL the file or folder that was de-identified.")  # fmt: skip


def _ocr_image(ds: object, regions: list[list[int]], name: str, matchers: Matchers, folded: Matcher) -> list[Finding]:
    """OCR of every frame of a released image: recognised text holding an identifying value of the originals is a
    finding anywhere; in the regions the run blanked, any text box (or ink line of the detector-free pass) is."""
    from medseg.deid.glyphs import find_text_lines
    from medseg.deid.ocr import MIN_ALNUM, MIN_SCORE, TextBox, read_text
    from medseg.deid.pixels import frames_for_check

    findings = []
    for index, display in frames_for_check(ds):
        recognised = read_text(display)
        for box, text in recognised:
            hits = ocr_hits(text, matchers, folded)
            if hits:
                where = f"pixels, frame {index}, box {box.x0},{box.y0}-{box.x1},{box.y1}"
                kind = folded.kinds.get(hits[0]) or matchers.kind(hits[0])
                findings.append(Finding(name, where, f"burned-in {kind}"))
        cleaned = [TextBox(r[1], r[2], r[3], r[4], 1.0, 0) for r in regions if r[0] == index]
        if not cleaned:
            continue
        boxes = [b for b, _ in recognised if b.alnum >= MIN_ALNUM and b.score >= MIN_SCORE]
        for box in boxes + [TextBox(*line, 1.0, 0) for line in find_text_lines(display)]:
            if any(box.overlaps(c) for c in cleaned):
                where = f"pixels, frame {index}, box {box.x0},{box.y0}-{box.x1},{box.y1}"
                findings.append(Finding(name, where, "burned-in text"))
    return findings
