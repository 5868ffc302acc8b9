"""`medseg convert INPUT OUTPUT.nii.gz`: DICOM series/study or NIfTI to NIfTI with exact geometry."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.state import console

EXAMPLES = """
Examples:

  medseg convert study/ ct.nii.gz

  medseg series study/            # list the series and pick one

  medseg convert study/ ct.nii.gz --series 1.2.840.113619.2.55.3

  medseg convert enhanced_ct.dcm ct.nii.gz --overwrite
"""


def register(app: typer.Typer) -> None:
    """Add the `convert` subcommand to the app."""

    @app.command("convert", epilog=EXAMPLES)
    def convert(
        input: Path = typer.Argument(..., help="DICOM folder/file or NIfTI file."),
        output: Path = typer.Argument(..., help="Output .nii or .nii.gz path."),
        series: str | None = typer.Option(
            None, "--series", help="Series to read from a folder (a key from `medseg series`, or SeriesInstanceUID)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    ) -> None:
        """Convert a DICOM series (or the main series of a study) to NIfTI with exact geometry."""
        from medseg.cli.audited import audited, series_param
        from medseg.io import read_image, write_nifti
        from medseg.io.nifti import check_nifti_output

        _refuse_output_onto_input(input, output)
        check_nifti_output(output, overwrite)
        with audited("convert", params={"series": series_param(series), "overwrite": overwrite}) as rec:
            rec.add_inputs([input])
            rec.will_write([output])
            volume = read_image(input, series_key=series)
            for note in volume.meta.notes:
                console.warn(note)
            write_nifti(volume, output, overwrite=overwrite)
            rec.add_outputs([output])
        console.result(
            f"{output}: {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} voxels, "
            f"spacing {', '.join(f'{s:.4g}' for s in volume.spacing)} mm, {volume.array.dtype}"
        )


def _refuse_output_onto_input(input: Path, output: Path) -> None:
    """OUTPUT naming the input file itself (also through a link) is refused (UsageError, exit 2): with --overwrite it
    replaced the only copy of the scan, and a failed end event then deleted it."""
    from medseg.errors import UsageError
    from medseg.guard import resolved

    if resolved(input) == resolved(output):
        hint = "Pass another OUTPUT path; the input is never replaced."
        raise UsageError("output is the input", path=output, hint=hint)
