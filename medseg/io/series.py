"""Find the DICOM series in a folder: one header read per file, grouped by UID and geometry, then classified.

Grouping: files sharing SeriesInstanceUID, modality, SOP class, frame of reference, matrix size, image type
(LOCALIZER or not) and echo number form a base group; it is then split by orientation and pixel spacing (so
shared or EMPTY UIDs still give clean stacks). Each enhanced multi-frame file is a group of its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.digests import file_sha256
from medseg.errors import InvalidInputError
from medseg.io.atomic import is_unfinished_write
from medseg.io.dicom_classify import VOLUME_MODALITIES, non_image_kind
from medseg.io.dicom_geometry import ORIENTATION_TOL, PIXEL_SPACING_RTOL
from medseg.io.dicom_headers import NOT_DICOM, Header, HeaderError, image_type, raw_text, read_header, text


@dataclass(frozen=True)
class SeriesInfo:
    """One group of DICOM objects: a 3D image volume (`is_volume`) or something medseg does not read (`skip_reason`).

    `key` is the SeriesInstanceUID, `<uid>#<n>` when one UID held several geometries, or a stable generated key
    `auto-<hash>` when the UID is empty (so it is a key, not always a UID; `series_instance_uid` is the UID); pass
    it to `read_image(..., series_key=key)` / `--series`.
    """

    key: str
    modality: str
    description: str
    files: tuple[Path, ...]
    n_slices: int
    is_volume: bool
    skip_reason: str | None
    study_uid: str
    frame_of_reference_uid: str
    series_instance_uid: str = ""
    notes: tuple[str, ...] = ()
    split_group: int = -1  # >= 0 when one series was split by geometry; equal values mark the same origin
    matrix: tuple[int, int] = (0, 0)  # rows, columns
    pixel_spacing_mm: tuple[float, float] | None = None
    derived: bool = False  # ImageType says DERIVED or SECONDARY (a reformat, MIP or other processed copy)
    axial: bool = True  # slice normal within 45 degrees of the patient's head-foot axis
    kernel: str = ""  # ConvolutionKernel (its first value), as the scanner wrote it
    coverage_mm: float = 0.0  # length along the slice normal: head-foot coverage for an axial series

    @property
    def sharp(self) -> bool:
        """A lung, bone or other sharp-kernel reconstruction (see `is_sharp_reconstruction`)."""
        return is_sharp_reconstruction(self.kernel, self.description)

    def grid_fineness(self) -> tuple[int, float]:
        """Pixels per slice, then minus the pixel area: larger is finer (for choosing between twin series)."""
        area = self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] if self.pixel_spacing_mm else float("inf")
        return self.matrix[0] * self.matrix[1], -area

    def summary(self) -> str:
        """One line for listings: key, modality, slice count and why it is skipped, if it is."""
        what = "volume" if self.is_volume else f"skipped: {self.skip_reason}"
        desc = f" '{self.description}'" if self.description else ""
        facts = f", {self.coverage_mm:.0f} mm head-foot" if self.is_volume and self.axial and self.coverage_mm else ""
        if self.kernel or self.sharp:
            facts += f", kernel {self.kernel or '?'} ({'sharp/lung/bone' if self.sharp else 'soft tissue'})"
        return (f"{self.key} {self.modality or '?'}{desc} {self.n_slices} slice(s), {len(self.files)} file(s){facts}"
                f" - {what}")  # fmt: skip


SHARP_WORDS = ("LUNG", "BONE", "SHARP", "EDGE")
SHARP_KERNELS = re.compile(r"^(?:B|BR|BL|I|HR)[5-9][0-9](?:[A-Z]|$)|^FC[5-8][0-9]$|^(?:L|D|E|YC|YD)$")


def is_sharp_reconstruction(kernel: str, description: str) -> bool:
    """Whether a series is a lung, bone or other sharp-kernel reconstruction, which a soft-tissue model is not trained
    on (its edge overshoot and noise cut the liver by about a third on real CT). Conservative, so an unknown name
    counts as soft tissue: a word of ConvolutionKernel or SeriesDescription starting with LUNG, BONE (GE BONEPLUS),
    SHARP or EDGE; or the kernel (its first value) is Siemens B/Br/Bl/I/Hr 50-99 (B70f, Br64, Bl57, I70f),
    Canon/Toshiba FC50-FC89 (lung and high-resolution) or Philips L, D, E, YC or YD."""
    words = re.split(r"[^A-Z0-9]+", f"{kernel} {description}".upper())
    if any(w.startswith(SHARP_WORDS) for w in words):
        return True
    name = kernel.upper().strip()
    return bool(SHARP_KERNELS.match(name)) or any(SHARP_KERNELS.match(w) and w[:1] in "BI" and len(w) >= 3
                                                   for w in words)  # fmt: skip


@dataclass
class FolderScan:
    """Everything one scan of a folder found: the series, their parsed headers, and files that were skipped."""

    root: Path
    series: list[SeriesInfo]
    headers: dict[str, list[Header]]
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)
    damaged: list[tuple[Path, str, str | None]] = field(default_factory=list)  # DICOM files that failed: path,
    # reason, and their SeriesInstanceUID when it could still be read (None when not)

    def damaged_in(self, series: SeriesInfo) -> list[tuple[Path, str]]:
        """Damaged DICOM files that belong to `series` (same SeriesInstanceUID) or may belong to it (series
        unreadable, and in a folder that holds slices of `series`)."""
        folders = {f.parent for f in series.files}
        return [
            (p, r)
            for p, r, uid in self.damaged
            if uid == series.series_instance_uid or (uid is None and p.parent in folders)
        ]

    def notes(self) -> list[str]:
        """Non-fatal findings to carry into VolumeMeta.notes."""
        out: list[str] = []
        by_reason: dict[str, list[Path]] = {}
        for path, reason in self.skipped_files:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in sorted(by_reason.items()):
            out.append(f"skipped {len(paths)} file(s): {reason} (e.g. {paths[0].name})")
        return out


@dataclass(frozen=True)
class FolderWalk:
    """The regular files under a folder, and the entries that were skipped with the reason (never opened)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]


SPECIAL_KINDS = (
    (stat.S_ISFIFO, "named pipe (FIFO), not a file"),
    (stat.S_ISSOCK, "socket, not a file"),
    (stat.S_ISCHR, "device, not a file"),
    (stat.S_ISBLK, "device, not a file"),
)


def _entry_kind(path: Path) -> str | None:
    """None for a regular file (or a link to one), else why the entry is skipped; never opens the entry."""
    if is_unfinished_write(path.name):
        return "temporary file of an unfinished write, not input"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"broken or looping symbolic link ({exc.strerror})" if os.path.islink(path) else exc.strerror
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "symbolic link to a folder, not followed"
    return next((why for test, why in SPECIAL_KINDS if test(mode)), "not a regular file")


def walk_files(root: Path) -> FolderWalk:
    """Regular files under `root` (recursively, hidden ones included, symlinked folders not followed), sorted;
    pipes, sockets, devices, broken links and unreadable folders are listed as skipped, so nothing blocks."""
    root = Path(root)
    if root.is_file():
        return FolderWalk([root], [])
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        skipped.append((Path(exc.filename or root), f"folder not readable ({exc.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        dirs.sort()
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                skipped.append((Path(folder) / name, "symbolic link to a folder, not followed"))
        for name in names:
            path = Path(folder) / name
            why = _entry_kind(path)
            if why is None:
                files.append(path)
            else:
                skipped.append((path, why))
    return FolderWalk(sorted(files), sorted(skipped))


def check_entry(path: Path) -> None:
    """Refuse an input that is neither a folder nor a regular file (a named pipe, socket, device, broken link)."""
    if os.path.isdir(path):
        return
    why = _entry_kind(path)
    if why is not None:
        raise InvalidInputError(f"input is not a file or folder: {why}", path=path, hint="Pass a file or folder.")


def list_files(root: Path) -> list[Path]:
    """All regular files under `root` (see `walk_files`), sorted for determinism."""
    return walk_files(root).files


def scan_folder(
    root: Path, files: list[Path] | None = None, skipped: list[tuple[Path, str]] | None = None
) -> FolderScan:
    """Read every file's header once and group them into series; `skipped` carries entries the walk passed over."""
    headers: list[Header] = []
    damaged: list[tuple[Path, str, str | None]] = []
    if files is None:
        walk = walk_files(root)
        files, skipped = walk.files, [*walk.skipped, *(skipped or [])]
    skipped = list(skipped or [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                headers.append(Header.from_dataset(path, read_header(path)))
            except HeaderError as exc:
                skipped.append((path, exc.reason))
                if exc.reason != NOT_DICOM:
                    damaged.append((path, exc.reason, recover_series_uid(path)))
            except Exception as exc:  # any other parse failure: the file is unusable, say so and go on
                skipped.append((path, f"unreadable DICOM header ({type(exc).__name__})"))
                damaged.append((path, skipped[-1][1], recover_series_uid(path)))
        headers, copies = _drop_identical_copies(headers)
        skipped.extend((path, "identical copy of another file (same SOPInstanceUID and bytes)") for path in copies)
        series, by_uid = group_headers(headers)
    return FolderScan(root, series, by_uid, skipped, damaged)


def recover_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a damaged file when its start is still readable, else None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        value = ds.get("SeriesInstanceUID", None)
    except Exception:  # the damage may be anywhere; unknown is a valid answer
        return None
    return None if value is None else str(value).strip()


def _drop_identical_copies(headers: list[Header]) -> tuple[list[Header], list[Path]]:
    """Ignore byte-identical copies of one instance (e.g. 'IM1' and 'IM1 copy'); differing ones are kept (and
    then fail the duplicate-position check)."""
    by_instance: dict[str, list[Header]] = {}
    for h in headers:
        iid = text(h.dataset, "SOPInstanceUID")
        if iid:
            by_instance.setdefault(iid, []).append(h)
    drop: set[Path] = set()
    for same in by_instance.values():
        if len(same) < 2:
            continue
        digests: dict[str, Path] = {}
        for h in same:
            digest = file_sha256(h.path)
            if digest in digests:
                drop.add(h.path)
            else:
                digests[digest] = h.path
    return [h for h in headers if h.path not in drop], sorted(drop)


def group_headers(headers: list[Header]) -> tuple[list[SeriesInfo], dict[str, list[Header]]]:
    """Group parsed headers into classified series (volumes first, most slices first) and their members."""
    series: list[SeriesInfo] = []
    by_uid: dict[str, list[Header]] = {}
    for group in _group(headers):
        series.append(_classify(group))
        by_uid[group.key] = group.members
    series.sort(key=lambda s: (not s.is_volume, -s.n_slices, s.key))
    return series, by_uid


def find_series(folder: Path) -> list[SeriesInfo]:
    """All series under `folder`, volumes first (most slices first), each with its classification."""
    return scan_folder(Path(folder)).series


def _base_key(h: Header) -> tuple[object, ...]:
    localizer = "LOCALIZER" in image_type(h.dataset)
    if h.frames > 1 or h.is_enhanced:
        return ("file", str(h.path))
    uid_part = h.series_uid or (  # no UID to tell two reconstructions apart: their number and kernel do
        f"empty-uid|{h.study_uid}|{raw_text(h.dataset, 'SeriesNumber') or ''}"
        f"|{raw_text(h.dataset, 'ConvolutionKernel') or ''}"
    )
    return (
        uid_part,
        h.modality,
        h.sop_class_uid,
        h.frame_of_reference_uid,
        h.rows,
        h.columns,
        h.samples_per_pixel,
        localizer,
        raw_text(h.dataset, "EchoNumbers") or "",
    )


def _same_geometry(a: Header, b: Header) -> bool:
    if (a.orientation is None) != (b.orientation is None) or (a.pixel_spacing is None) != (b.pixel_spacing is None):
        return False
    if a.orientation is not None and np.max(np.abs(a.orientation - b.orientation)) > ORIENTATION_TOL:
        return False
    return a.pixel_spacing is None or bool(np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=PIXEL_SPACING_RTOL))


@dataclass(frozen=True)
class _Group:
    key: str
    members: list[Header]
    notes: tuple[str, ...]
    split_group: int  # index of the base group when it was split by geometry, else -1


def _group(headers: list[Header]) -> list[_Group]:
    """Split into groups with unique keys that are stable across runs."""
    base: dict[tuple[object, ...], list[Header]] = {}
    for h in headers:
        base.setdefault(_base_key(h), []).append(h)
    clustered: list[tuple[list[Header], int]] = []
    for n_base, members in enumerate(base.values()):
        clusters: list[list[Header]] = []
        for h in members:
            for cluster in clusters:
                if _same_geometry(cluster[0], h):
                    cluster.append(h)
                    break
            else:
                clusters.append([h])
        clustered.extend((c, n_base if len(clusters) > 1 else -1) for c in clusters)
    clustered.sort(key=lambda c: (-sum(max(h.frames, 1) for h in c[0]), str(c[0][0].path)))
    per_uid: dict[str, int] = {}
    for cluster, _ in clustered:
        per_uid[cluster[0].series_uid] = per_uid.get(cluster[0].series_uid, 0) + 1
    out: list[_Group] = []
    seen: dict[str, int] = {}
    for cluster, split in clustered:
        uid = cluster[0].series_uid
        notes: tuple[str, ...] = ()
        if not uid:
            key = _generated_key(cluster)
        elif per_uid[uid] > 1:
            seen[uid] = seen.get(uid, 0) + 1
            key = f"{uid}#{seen[uid]}"
            notes = (
                f"series {uid} is split into {per_uid[uid]} groups by geometry or object type; "
                f"this is group {seen[uid]}",
            )
        else:
            key = uid
        out.append(_Group(key, cluster, notes, split))
    return out


def _generated_key(cluster: list[Header]) -> str:
    """A stable key for a group whose SeriesInstanceUID is empty: a hash of its instances and geometry."""
    h0 = cluster[0]
    digest = hashlib.sha256()
    for part in (h0.frame_of_reference_uid, h0.modality, h0.rows, h0.columns):
        digest.update(f"{part}|".encode())
    instance_ids = sorted(
        text(h.dataset, "SOPInstanceUID")
        or text(getattr(h.dataset, "file_meta", {}), "MediaStorageSOPInstanceUID")
        or h.path.name
        for h in cluster
    )
    for iid in instance_ids:
        digest.update(f"{iid}|".encode())
    return f"auto-{digest.hexdigest()[:16]}"


def _skip_reason(members: list[Header], n_slices: int) -> str | None:
    h = members[0]
    kind = non_image_kind(h.dataset)
    if kind:
        return f"{kind}, not an image"
    if not h.has_pixels:
        return "no pixel data (header-only objects)"
    itype = image_type(h.dataset)
    if "LOCALIZER" in itype or "SCOUT" in itype:
        return "localizer/scout image"
    if "SCREEN SAVE" in itype or ("dose" in h.description.lower() and "report" in h.description.lower()):
        return "screen capture / dose report"
    if h.modality not in VOLUME_MODALITIES:
        return f"modality {h.modality or 'unknown'} is not a CT/MR/PET cross-sectional image"
    if h.samples_per_pixel != 1:
        return "colour image, not a greyscale volume"
    if (part := _concatenation_part(h)) is not None:
        return part
    if h.orientation is None or h.pixel_spacing is None:
        return "no patient geometry (ImageOrientationPatient/PixelSpacing missing)"
    if n_slices < 2:
        return "single slice (a 3D volume needs at least 2 slices)"
    return _mixed_identity(members)


def _concatenation_part(h: Header) -> str | None:
    """A multi-frame object stored as one part of a concatenation (PS3.3 C.7.6.16.2.2.4): medseg does not join the
    parts, and one part read alone is a fraction of the scan (half a liver, no error)."""
    total = h.dataset.get("InConcatenationTotalNumber", None)
    if h.frames <= 1 or not str(h.dataset.get("ConcatenationUID", "") or "").strip():
        return None
    try:
        n = int(total) if total is not None else 0
    except (TypeError, ValueError):
        n = 0
    if n == 1:
        return None
    return f"{REFUSED_CONCATENATION} (part {h.dataset.get('InConcatenationNumber', '?')} of {n or '?'})"


REFUSED_CONCATENATION = "one part of a multi-frame concatenation, which medseg does not join"
PATIENT_KEYWORDS = ("PatientID", "PatientName")
TWO_PATIENTS = "(two patients in one series)"


def _distinct(members: list[Header], keyword: str) -> int:
    return len({raw_text(m.dataset, keyword) or "" for m in members})


def _mixed_identity(members: list[Header]) -> str | None:
    """Why slices that share a series UID and a grid still cannot be one volume: they name different patients (an
    export tool or anonymiser that reuses UIDs); never merged, and never one of them chosen silently."""
    for keyword in PATIENT_KEYWORDS:
        if (n := _distinct(members, keyword)) > 1:
            return f"its slices carry {n} different {keyword} values {TWO_PATIENTS}"
    return None


def _identity_notes(members: list[Header]) -> tuple[str, ...]:
    """One patient, yet several StudyInstanceUIDs (tools that give every file its own): read, and said."""
    n = _distinct(members, "StudyInstanceUID")
    return (f"its slices carry {n} different StudyInstanceUID values; outputs name the first slice's study",) if n > 1 \
        else ()  # fmt: skip


def _classify(group: _Group) -> SeriesInfo:
    h = group.members[0]
    n_slices = sum(max(m.frames, 1) for m in group.members)
    reason = _skip_reason(group.members, n_slices)
    return SeriesInfo(
        key=group.key,
        modality=h.modality,
        description=h.description,
        files=tuple(m.path for m in group.members),
        n_slices=n_slices,
        is_volume=reason is None,
        skip_reason=reason,
        study_uid=h.study_uid,
        frame_of_reference_uid=h.frame_of_reference_uid,
        series_instance_uid=h.series_uid,
        notes=group.notes + _identity_notes(group.members),
        split_group=group.split_group,
        matrix=(h.rows, h.columns),
        pixel_spacing_mm=None if h.pixel_spacing is None else (float(h.pixel_spacing[0]), float(h.pixel_spacing[1])),
        derived=_is_derived(image_type(h.dataset)),
        axial=_is_axial(h.orientation),
        kernel=_first_value(h.dataset, "ConvolutionKernel"),
        coverage_mm=_coverage_mm(group.members),
    )


def _first_value(ds: object, keyword: str) -> str:
    """The first value of a (possibly multi-valued) text attribute, '' when absent: Siemens writes ['Br64', '3']."""
    value = getattr(ds, "get", lambda *_: None)(keyword, None)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = next(iter(value), "")
    return str(value).strip()


def _positions(h: Header) -> list[np.ndarray]:
    """The slice positions of one file: ImagePositionPatient, or each frame's PlanePositionSequence."""
    from medseg.io.dicom_headers import ds_floats

    if h.frames <= 1:
        pos = ds_floats(h.dataset, "ImagePositionPatient", 3)
        return [] if pos is None else [pos]
    out = []
    for item in h.dataset.get("PerFrameFunctionalGroupsSequence", None) or []:
        plane = item.get("PlanePositionSequence", None)
        pos = ds_floats(plane[0], "ImagePositionPatient", 3) if plane else None
        if pos is not None:
            out.append(pos)
    return out


def _coverage_mm(members: list[Header]) -> float:
    """The length a series covers along its slice normal (slice positions' extent plus one slice step, so a 5 mm
    and a 2.5 mm reconstruction of one scan measure alike); 0 when positions or orientation are missing."""
    orientation = members[0].orientation
    if orientation is None:
        return 0.0
    try:
        positions = [p for m in members for p in _positions(m)]
    except Exception:  # a damaged per-frame sequence: unknown coverage, decided by the other keys
        return 0.0
    if len(positions) < 2:
        return 0.0
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort(np.asarray(positions) @ normal)
    steps = np.diff(along)
    step = float(np.median(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 0.0
    return float(along[-1] - along[0]) + step


def _is_derived(itype: tuple[str, ...]) -> bool:
    """ImageType value 1 DERIVED or value 2 SECONDARY (PS3.3 C.7.6.1.1.2): not the scanner's own reconstruction."""
    return (len(itype) > 0 and itype[0] == "DERIVED") or (len(itype) > 1 and itype[1] == "SECONDARY")


def _is_axial(orientation: np.ndarray | None) -> bool:
    """Slice normal (row x column direction cosines) within 45 degrees of the patient z axis."""
    if orientation is None:
        return True
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    return bool(norm > 0 and abs(float(normal[2])) / norm >= 0.5**0.5)


COVERAGE_TOLERANCE_MM = 20.0
COVERAGE_TOLERANCE_FRACTION = 0.10


def covers_alike(a_mm: float, longest_mm: float) -> bool:
    """Whether a series' coverage is within tolerance of the longest: max(20 mm, 10 %). Reconstructions of one scan
    differ by a slice or two at each end (up to ~20 mm at 5 mm slices), while one restricted to a region (the chest
    for the lungs, the liver for a late phase) is shorter by 10 cm or more."""
    return a_mm >= longest_mm - max(COVERAGE_TOLERANCE_MM, COVERAGE_TOLERANCE_FRACTION * longest_mm)


def choose_series(
    series: list[SeriesInfo],
    prefer_modality: str | None = None,
    problem: Callable[[SeriesInfo], str | None] | None = None,
) -> SeriesInfo | None:
    """The main image series of a folder or study, one rule for `convert` and `infer`: a volume; one that stacks
    into a volume (`problem` returns None: no duplicate positions, gap or tilt, e.g. not a bolus-tracking series
    of 100 images at one table position) before one that does not; of the preferred modality when given; the
    scanner's own reconstruction before a DERIVED/SECONDARY copy (a reformat or MIP may hold more slices); axial
    before coronal or sagittal; then the longer head-foot coverage (within `covers_alike`: a chest-only lung series
    never beats the chest-abdomen-pelvis one); then a soft-tissue reconstruction before a sharp/lung/bone one
    (`is_sharp_reconstruction`); then the most slices; on a tie the finer grid (512x512 before its 256x256 twin);
    then the key, so the choice never depends on file or key order alone. None when there is no volume."""
    volumes = [s for s in series if s.is_volume]
    if not volumes:
        return None
    unreadable = {s.key for s in volumes if problem is not None and len(volumes) > 1 and problem(s) is not None}

    def tier(s: SeriesInfo) -> tuple[bool, ...]:
        return (s.key in unreadable, prefer_modality is not None and s.modality != prefer_modality, s.derived,
                not s.axial)  # fmt: skip

    best = min(tier(s) for s in volumes)
    first = [s for s in volumes if tier(s) == best]
    longest = max(s.coverage_mm for s in first)
    return min(
        first,
        key=lambda s: (not covers_alike(s.coverage_mm, longest), s.sharp, -s.n_slices,
                       tuple(-v for v in s.grid_fineness()), s.key),
    )  # fmt: skip
