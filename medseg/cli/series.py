"""`medseg series FOLDER`: list the DICOM series found in a folder, with what medseg would do with each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medseg.cli.state import console

if TYPE_CHECKING:
    from medseg.io.series import SeriesInfo

EXAMPLES = """
Examples:

  medseg series study/

  medseg series study/ --json > series.json

  medseg convert study/ ct.nii.gz --series <SERIES from the list>
"""


def register(app: typer.Typer) -> None:
    """Add the `series` subcommand to the app."""

    @app.command("series", epilog=EXAMPLES)
    def series(
        folder: Path = typer.Argument(..., help="Folder to scan (recursively) for DICOM files."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object per series instead of a table."),
    ) -> None:
        """List the series in a DICOM folder: which are 3D volumes, and why the others are skipped."""
        from medseg.cli.audited import audited
        from medseg.errors import InvalidInputError
        from medseg.io.dicom_reader import stack_problem
        from medseg.io.series import choose_series, scan_folder

        if not folder.is_dir():
            raise InvalidInputError("not a folder", path=folder, hint="Pass the folder that holds the DICOM files.")
        with audited("series", params={}) as rec:  # the checks too: the end record carries the exit code given
            rec.add_inputs([folder])
            scan = scan_folder(folder)
            for note in scan.notes():
                console.warn(note)
            if not scan.series:
                raise InvalidInputError("no DICOM files found", path=folder, hint="Pass a folder of DICOM files.")
            problems = {s.key: stack_problem(scan.headers[s.key], folder) for s in scan.series if s.is_volume}
            for s in scan.series:
                if as_json:
                    console.result(json.dumps({**_as_dict(s), "problem": problems.get(s.key)}, sort_keys=True))
                else:
                    console.result(_row(s, problems.get(s.key)))
            readable = sum(s.is_volume and problems[s.key] is None for s in scan.series)
            chosen = choose_series(scan.series, problem=lambda s: problems.get(s.key))
            tail = f"{chosen.key} is read by default" if readable and chosen else "nothing here can be read as a volume"
            console.info(f"{len(scan.series)} series, {readable} readable volume(s); {tail}")


def _row(s: SeriesInfo, problem: str | None) -> str:
    what = f"skip: {s.skip_reason}" if not s.is_volume else f"VOLUME, unreadable: {problem}" if problem else "VOLUME"
    counts = f"{s.n_slices:>5} slices\t{len(s.files):>5} files"
    return f"{s.key}\t{s.modality or '?'}\t{counts}\t{s.description or '-'}\t{what}"


def _as_dict(s: SeriesInfo) -> dict[str, object]:
    return {
        "series": s.key,
        "series_instance_uid": s.series_instance_uid,
        "modality": s.modality,
        "description": s.description,
        "n_slices": s.n_slices,
        "n_files": len(s.files),
        "is_volume": s.is_volume,
        "derived": s.derived,
        "axial": s.axial,
        "skip_reason": s.skip_reason,
        "notes": list(s.notes),
    }
