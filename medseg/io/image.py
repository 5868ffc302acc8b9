"""`read_image`: one entry point for a DICOM folder, a single (multi-frame) DICOM file, or a NIfTI file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from medseg.errors import InvalidInputError, UsageError
from medseg.io.dicom_geometry import check_pixel_spacing, check_plausible_grid
from medseg.io.dicom_headers import NOT_DICOM, Header, HeaderError, read_header
from medseg.io.dicom_reader import stack_problem, volume_from_headers
from medseg.io.nifti import is_nifti_path, read_nifti
from medseg.io.series import FolderScan, SeriesInfo, check_entry, choose_series, group_headers, scan_folder, walk_files
from medseg.io.volume import Volume


def read_image(path: Path, series_key: str | None = None) -> Volume:
    """Read a CT/MR/PET volume from a DICOM folder (main series, or `series_key`), a DICOM file, or NIfTI."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("input not found", path=path, hint="Check the path.")
    check_entry(path)
    if path.is_file():
        if series_key is not None:
            raise UsageError(
                "a series can only be chosen from a folder", path=path, hint="Drop --series or pass the folder."
            )
        if is_nifti_path(path):
            return _read_checked_nifti(path)
        return _read_dicom_file(path)
    walk = walk_files(path)
    files = walk.files
    if not files:
        what = f"no regular files ({walk.skipped[0][0].name}: {walk.skipped[0][1]})" if walk.skipped else "empty"
        raise InvalidInputError(f"folder is {what}", path=path, hint="Pass the folder that holds the DICOM files.")
    scan = scan_folder(path, files, walk.skipped)
    if not scan.series:
        reasons = Counter(reason for _, reason in scan.skipped_files)
        found = ", ".join(f"{n} {r}" for r, n in reasons.items())
        raise InvalidInputError(
            f"no DICOM files found ({len(files)} file(s) checked: {found}; e.g. {files[0].name})",
            path=path,
            hint="Pass a folder of DICOM images, a .nii/.nii.gz file, or a multi-frame DICOM file.",
        )
    chosen = _choose(scan, series_key)
    notes = [*scan.notes(), *chosen.notes, *_other_series_notes(scan, chosen)]
    try:
        return volume_from_headers(scan.headers[chosen.key], path, notes)
    except InvalidInputError as exc:
        broken = [(p, r) for p, r in scan.skipped_files if r != NOT_DICOM]
        if broken:
            exc.message += (
                f"; {len(broken)} DICOM file(s) in the folder could not be read and may be the cause "
                f"({broken[0][0].name}: {broken[0][1]})"
            )
        raise


def _read_checked_nifti(path: Path) -> Volume:
    """A NIfTI image whose voxel spacing and extent are physically plausible (same bounds as DICOM)."""
    volume = read_nifti(path)
    check_pixel_spacing(volume.spacing[:2], path.name, path)
    check_plausible_grid(volume.shape, volume.spacing, path)
    return volume


def _read_dicom_file(path: Path) -> Volume:
    try:
        header = Header.from_dataset(path, read_header(path))
    except HeaderError as exc:
        raise InvalidInputError(
            exc.reason, path=path, hint="Pass a DICOM folder, a multi-frame DICOM file, or a .nii/.nii.gz file."
        ) from exc
    info = group_headers([header])[0][0]
    if not info.is_volume:
        hint = "Pass the folder that holds the whole series." if header.frames <= 1 else None
        raise InvalidInputError(f"not a 3D image volume: {info.skip_reason}", path=path, hint=hint)
    return volume_from_headers([header], path)


def _choose(scan: FolderScan, series_key: str | None) -> SeriesInfo:
    """The requested series, or the main series by `choose_series` (the rule `medseg infer` uses too)."""
    if series_key is not None:
        matches = [s for s in scan.series if s.key == series_key] or [
            s for s in scan.series if s.series_instance_uid == series_key
        ]
        if not matches:
            raise UsageError(
                f"series {series_key} not found; found {', '.join(s.key for s in scan.series)}",
                path=scan.root,
                hint="List the series with `medseg series FOLDER`.",
            )
        volumes = [s for s in matches if s.is_volume]
        if not volumes:
            raise InvalidInputError(
                f"series {series_key} is not a 3D image volume: {matches[0].skip_reason}", path=scan.root
            )
        check_damaged_files(scan, volumes[0])
        return volumes[0]
    chosen = choose_series(scan.series, problem=series_problem(scan))
    if chosen is None:
        raise InvalidInputError(
            f"no 3D image series found; found {_describe(scan.series)}",
            path=scan.root,
            hint="medseg needs a CT/MR/PET series of at least 2 slices; see `medseg series FOLDER`.",
        )
    check_stray_slices(scan, chosen)
    check_damaged_files(scan, chosen)
    return chosen


def series_problem(scan: FolderScan) -> Callable[[SeriesInfo], str | None]:
    """Why a series of the scan would not stack into a volume (headers only, each series checked once), so that
    `choose_series` reads a readable series before a larger one that is not."""
    found: dict[str, str | None] = {}

    def problem(series: SeriesInfo) -> str | None:
        if series.key not in found:
            found[series.key] = stack_problem(scan.headers[series.key], scan.root)
        return found[series.key]

    return problem


def _describe(series: list[SeriesInfo]) -> str:
    """e.g. '2 x DICOM SEG (segmentation), not an image; 1 x single slice (...) [CT]'."""
    counts = Counter(f"{s.skip_reason} [{s.modality or '?'}]" for s in series)
    return "; ".join(f"{n} x {what}" for what, n in counts.most_common())


def check_damaged_files(scan: FolderScan, chosen: SeriesInfo) -> None:
    """Refuse a series when a DICOM file that belongs to it (or may: its series is unreadable) is damaged: the
    volume would silently lack that slice."""
    damaged = scan.damaged_in(chosen)
    if damaged:
        path, reason = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise InvalidInputError(
            f"{reason}; it belongs or may belong to the series being read, which would then lack a slice{more}",
            path=path,
            hint="Replace or remove the damaged file (copy or re-export the series again).",
        )


STRAY_REASONS = ("single slice", "no patient geometry")


def _same_series(s: SeriesInfo, chosen: SeriesInfo) -> bool:
    """Split off the chosen series: by geometry, or by matrix size or frame of reference under its own UID."""
    if chosen.split_group >= 0 and s.split_group == chosen.split_group:
        return True
    return bool(chosen.series_instance_uid) and s.series_instance_uid == chosen.series_instance_uid


def check_stray_slices(scan: FolderScan, chosen: SeriesInfo) -> None:
    """Refuse a series that also holds single slices of another geometry, matrix size or frame of reference, or
    without geometry (likely a broken export): reading the rest would drop a slice, at the end of the stack
    silently."""
    strays = [
        s
        for s in scan.series
        if s is not chosen
        and _same_series(s, chosen)
        and s.skip_reason is not None
        and s.skip_reason.startswith(STRAY_REASONS)
    ]
    if strays:
        name = chosen.series_instance_uid or "(empty SeriesInstanceUID)"
        raise InvalidInputError(
            f"mixed orientations or geometry in series {name}: {chosen.n_slices} slices agree but "
            f"{len(strays)} stray slice(s) differ (e.g. {strays[0].files[0].name})",
            path=scan.root,
            hint=f"Remove the stray slices, or read the main group explicitly with --series {chosen.key}.",
        )


def _other_series_notes(scan: FolderScan, chosen: SeriesInfo) -> list[str]:
    others = [s for s in scan.series if s is not chosen]
    if not others:
        return []
    volumes = [s for s in others if s.is_volume]
    notes = [f"series {s.key} ({s.n_slices} slices) not read: {why}" for s in volumes
             if (why := series_problem(scan)(s)) is not None]  # fmt: skip
    if volumes:
        notes.append(
            f"folder holds {len(volumes) + 1} volume series; read {chosen.key} ({chosen.n_slices} slices); "
            f"pick another with --series (see `medseg series`)"
        )
    skipped = [s for s in others if not s.is_volume]
    if skipped:
        notes.append(f"skipped non-volume objects: {_describe(skipped)}")
    return notes
