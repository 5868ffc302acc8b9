"""What to segment: one case per NIfTI file and per DICOM study (its main image series) found under the input."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medseg.errors import InvalidInputError, UsageError
from medseg.io import SeriesInfo, Volume, read_image
from medseg.io.dicom_reader import volume_from_headers
from medseg.io.image import check_damaged_files, check_stray_slices, series_problem
from medseg.io.nifti import is_nifti_path
from medseg.io.series import REFUSED_CONCATENATION, TWO_PATIENTS, FolderScan, check_entry, choose_series


@dataclass(frozen=True)
class Case:
    """One series to segment: a name for its output folder, where it came from, and how to load it."""

    name: str
    source: Path
    kind: str  # "dicom" | "nifti"
    load: Callable[[], Volume] = field(repr=False, compare=False)
    notes: tuple[str, ...] = ()
    prepared: Callable[[], Any] = field(default=lambda: None, repr=False, compare=False)  # batch: made ahead


def safe_name(text: str) -> str:
    """A folder name made of letters, digits, '.', '_' and '-' only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"
    return name[:80]


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _load_series(scan: FolderScan, series: SeriesInfo, folder: Path, notes: tuple[str, ...]) -> Volume:
    """Read one series the way `read_image` does, including its refusal of stray slices of another geometry."""
    check_stray_slices(scan, series)
    check_damaged_files(scan, series)
    return volume_from_headers(scan.headers[series.key], folder, list(notes))


def _dicom_cases(
    root: Path, files: list[Path], modality: str, skipped: list[tuple[Path, str]]
) -> tuple[list[Case], list[str]]:
    from medseg.io.series import scan_folder

    scan = scan_folder(root, files, skipped)
    studies: dict[str, list[SeriesInfo]] = {}
    for s in scan.series:
        if s.is_volume:
            studies.setdefault(_study_of(s), []).append(s)
    cases = []
    problem = series_problem(scan)
    for members in studies.values():
        main = choose_series(members, modality, problem)
        assert main is not None  # members are volumes
        others = tuple(f"other series in this study not segmented: {s.summary()}"
                       + (f" (not readable: {why})" if (why := problem(s)) is not None else "")
                       for s in members if s is not main)  # fmt: skip
        folder, name = _case_folder(root, main)
        notes = (*scan.notes(), *main.notes, *others)
        cases.append(Case(name, folder, "dicom", lambda m=main, f=folder, n=notes: _load_series(scan, m, f, n), notes))
    refused = [s for s in scan.series if not s.is_volume and _refused(s.skip_reason) and _study_of(s) not in studies]
    one_per_study = {_study_of(s): s for s in reversed(refused)}  # the first of each study kept
    cases += [_refused_case(root, s) for s in one_per_study.values()]
    skipped = [f"not segmented: {s.summary()}" for s in scan.series if not s.is_volume and s not in refused]
    return cases, skipped + scan.notes()


def _study_of(series: SeriesInfo) -> str:
    """The study a series belongs to: its StudyInstanceUID, else its folder."""
    return series.study_uid or f"folder:{series.files[0].parent}"


def _case_folder(root: Path, series: SeriesInfo) -> tuple[Path, str]:
    """The folder holding the series' files and the case name made from it (relative to `root`, else its name)."""
    folder = Path(*_common_parts([f.parent for f in series.files]))
    rel = folder.relative_to(root) if folder.is_relative_to(root) else Path(folder.name)
    return folder, safe_name(str(rel)) if str(rel) != "." else safe_name(root.name)


def _refused(reason: str | None) -> bool:
    """A series that is image data of a scan yet cannot be read as it is: two patients, a concatenation part."""
    return bool(reason) and (reason.endswith(TWO_PATIENTS) or reason.startswith(REFUSED_CONCATENATION))


def _refused_case(root: Path, series: SeriesInfo) -> Case:
    """A study whose only volume cannot be read as it is (`_refused`): a case that fails when loaded (exit 3, a
    failed summary.json that monitoring counts), never a study that silently disappears from a batch."""
    folder, name = _case_folder(root, series)

    def refuse() -> Volume:
        hint = ("Export each patient's study on its own; slices of two patients are never merged into one volume."
                if series.skip_reason and series.skip_reason.endswith(TWO_PATIENTS) else
                "Export the series as one multi-frame object or as single-frame images.")  # fmt: skip
        raise InvalidInputError(f"series {series.key} not read: {series.skip_reason}", path=folder, hint=hint)

    return Case(name, folder, "dicom", refuse)


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for f in folders[1:]:
        n = 0
        while n < min(len(parts), len(f.parts)) and parts[n] == f.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def _unique(cases: list[Case]) -> list[Case]:
    """Cases with distinct output-folder names: the first of a name keeps it, a later one gets the first free
    `<name>-<n>` (n = 2, 3...) not taken by any case's own name, so `x.nii`, `x.nii.gz` and `x-2.nii.gz` become
    x, x-3 and x-2, never two cases writing into one folder."""
    taken = {c.name for c in cases}
    kept: set[str] = set()
    out = []
    for c in cases:
        if c.name not in kept:
            kept.add(c.name)
            out.append(c)
            continue
        n = 2
        while f"{c.name}-{n}" in taken:
            n += 1
        taken.add(f"{c.name}-{n}")
        out.append(replace(c, name=f"{c.name}-{n}"))
    return out


def _outside(files: list[Path], out: Path | None, root: Path) -> tuple[list[Path], list[str]]:
    """`files` less those inside the output folder when it lies inside the input: a rerun never reads medseg's own
    label maps and SEGs as new cases. An output folder that is the input folder itself is refused."""
    if out is None:
        return files, []
    out, root = Path(out).resolve(), root.resolve()
    if out == root:
        raise UsageError("--out is the input folder: outputs would be read as input by the next run", path=out,
                         hint="Choose an --out outside the input, or a subfolder of it.")  # fmt: skip
    if not out.is_relative_to(root):
        return files, []
    kept = [f for f in files if not (f.parent.resolve() / f.name).is_relative_to(out)]  # a link is where it lies
    skipped = len(files) - len(kept)
    return kept, [f"{skipped} file(s) inside the output folder {out} not read as input"] if skipped else []


def discover_cases(path: Path, modality: str = "CT", series_key: str | None = None,
                   out: Path | None = None) -> tuple[list[Case], list[str]]:  # fmt: skip
    """Cases under `path` (a NIfTI file, a DICOM file or folder, or a folder of studies/NIfTI files) and notes;
    with `series_key` (`medseg series`'s key or a SeriesInstanceUID) the one case is that series of the folder.
    Files inside `out` (the output folder, when it lies inside `path`) are never cases."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("input not found", path=path, hint="Check the path.")
    check_entry(path)
    if path.is_dir():
        _outside([], out, path)  # refuses --out == the input folder, whatever is inside
    if series_key is not None:
        if not path.is_dir():
            raise UsageError("--series chooses a series of a DICOM folder", path=path,
                             hint="Drop --series or pass the study folder.")  # fmt: skip
        return [Case(safe_name(path.name), path, "dicom", lambda: read_image(path, series_key))], []
    if path.is_file():
        name = _nifti_stem(path) if is_nifti_path(path) else path.stem
        kind = "nifti" if is_nifti_path(path) else "dicom"
        return [Case(safe_name(name), path, kind, lambda: read_image(path))], []
    from medseg.io.series import walk_files

    walk = walk_files(path)
    files, out_notes = _outside(walk.files, out, path)
    niftis = [f for f in files if is_nifti_path(f)]
    others = [f for f in files if not is_nifti_path(f)]
    cases = [
        Case(safe_name(str(f.relative_to(path).parent / _nifti_stem(f))), f, "nifti", lambda f=f: read_image(f))
        for f in niftis
    ]
    notes: list[str] = list(out_notes)
    if others or walk.skipped:
        dicom, notes = _dicom_cases(path, others, modality, walk.skipped)
        cases += dicom
    if not cases:
        raise InvalidInputError(
            f"no image volume found ({len(files)} file(s) checked)" + (f": {'; '.join(notes[:3])}" if notes else ""),
            path=path,
            hint="Pass a DICOM study folder, a .nii/.nii.gz file, or a folder holding several of them.",
        )
    if len(cases) == 1 and cases[0].kind == "dicom":  # one study given: named after the folder given, not a subfolder
        cases = [replace(cases[0], name=safe_name(path.resolve().name))]
    return _unique(cases), notes
