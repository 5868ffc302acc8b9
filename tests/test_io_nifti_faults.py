"""NIfTI faults: a full disk or a killed writer never leaves a partial output or damages an existing one; corrupt,
truncated, 4D or non-finite input is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.errors import InvalidInputError
from medseg.io import read_nifti, write_nifti
from medseg.io.volume import Volume

WRITER = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from medseg.errors import MedsegError
    from medseg.io import write_nifti
    from medseg.io.volume import Volume

    limit = int(sys.argv[2])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(0)
    vol = Volume.from_array(rng.integers(-1000, 1000, (256, 256, int(sys.argv[3])), dtype=np.int16))
    print("writing", flush=True)
    try:
        write_nifti(vol, Path(sys.argv[1]), overwrite=True)
    except MedsegError as exc:
        print(type(exc).__name__, exc.exit_code, exc.one_line())
        sys.exit(exc.exit_code)
    """
)


def run_writer(target: Path, fsize_limit: int, slices: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(target), str(fsize_limit), str(slices)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_disk_full_keeps_the_previous_output_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    previous = Volume.from_array(np.ones((4, 5, 6), dtype=np.int16))
    write_nifti(previous, target)
    before = target.read_bytes()
    res = run_writer(target, fsize_limit=64 * 1024, slices=40)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "ProcessingError" in res.stdout and "cannot write output" in res.stdout
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    np.testing.assert_array_equal(read_nifti(target).array, previous.array)


def test_killed_writer_never_leaves_a_partial_output(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "0", "300"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if target.exists():  # the rename happened before the kill: then the file must be complete
        assert read_nifti(target).shape == (256, 256, 300)
    assert all(p.name.startswith(".tmp-out.nii.gz-") or p == target for p in tmp_path.iterdir())


def test_corrupt_nifti_is_invalid_input(shared: Path, tmp_path: Path) -> None:
    data = (shared / "ct/totalseg_example_ct_sm/liver.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="truncated or corrupt"):
        read_nifti(bad)
    flipped = bytearray(data)
    flipped[len(data) // 2 : len(data) // 2 + 50] = bytes(50)  # SimpleITK reads this silently, with wrong voxels
    (tmp_path / "flipped.nii.gz").write_bytes(bytes(flipped))
    with pytest.raises(InvalidInputError, match="truncated or corrupt"):
        read_nifti(tmp_path / "flipped.nii.gz")
    plain = tmp_path / "short.nii"
    plain.write_bytes(_uncompressed(shared / "ct/totalseg_example_ct_sm/liver.nii.gz")[:-1000])
    with pytest.raises(InvalidInputError, match="truncated"):
        read_nifti(plain)
    (tmp_path / "text.nii").write_text("hello")
    with pytest.raises(InvalidInputError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "text.nii")


def test_4d_nifti_with_several_volumes_is_refused(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), dtype=np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InvalidInputError, match="3D volumes only") as four:
        read_nifti(tmp_path / "4d.nii.gz")
    assert "Split the 4D series" in four.value.one_line()
    nib.save(nib.Nifti1Image(np.zeros((3, 3), dtype=np.int16), np.eye(4)), str(tmp_path / "2d.nii.gz"))
    with pytest.raises(InvalidInputError, match="3D volumes only") as two:
        read_nifti(tmp_path / "2d.nii.gz")
    assert "2D slice" in two.value.one_line() and "4D" not in two.value.one_line()


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "float64"]),
    shape=st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(2, 12)),
    bad=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from([np.nan, np.inf, -np.inf])),
                 min_size=0, max_size=6),
    order=st.sampled_from("CF"),
)  # fmt: skip
def test_nan_or_infinite_voxels_are_refused_and_counted(tmp_path_factory, dtype, shape, bad, order) -> None:
    """A float NIfTI with NaN or infinite voxels is not an image (converters write them for missing data): refused
    with their count, exit 3; the same volume without them reads unchanged. Checked in slabs (slab_voxels small)."""
    import nibabel as nib

    from medseg.io.nifti import _require_finite

    rng = np.random.default_rng(len(bad))
    array = np.asarray(rng.normal(0, 300, shape).astype(dtype), order=order)
    flat = array.reshape(-1, order="A")
    positions = {int(f * array.size) for f, _ in bad}
    for f, value in bad:
        flat[int(f * array.size)] = value
    path = tmp_path_factory.mktemp("nan") / "image.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    if positions:
        with pytest.raises(InvalidInputError, match=f"{len(positions)} of {array.size} voxels are NaN or infinite"):
            read_nifti(path)
        with pytest.raises(InvalidInputError, match=f"{len(positions)} of {array.size}"):
            _require_finite(array, path, slab_voxels=7)
    else:
        np.testing.assert_array_equal(read_nifti(path).array, array)
        _require_finite(array, path, slab_voxels=7)


def test_cli_refuses_a_nan_image_in_one_line_with_exit_3(tmp_path: Path) -> None:
    import nibabel as nib

    array = np.zeros((64, 64, 48), dtype=np.float32)
    array[10:20, 10:20, 10:20] = np.nan
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0])), str(tmp_path / "nan.nii.gz"))
    cmd = [sys.executable, "-m", "medseg", "infer", str(tmp_path / "nan.nii.gz"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 3 and len(lines) == 1 and "1000 of 196608 voxels are NaN or infinite" in lines[0]
    assert "Traceback" not in proc.stderr and not list((tmp_path / "out").rglob("*.dcm"))


def _uncompressed(path: Path) -> bytes:
    import gzip

    return gzip.decompress(path.read_bytes())



def test_a_nifti_without_qform_or_sform_is_refused_not_placed_nominally(shared, tmp_path, capsys) -> None:
    """Codes 0 leave orientation unknown: a reviewer got the "liver" on the spleen (mirrored left-right, Dice 0.0,
    exit 0) and an output label map claiming scanner coordinates (code 1)."""
    import nibabel as nib
    from cli_run import run_in_process

    img = nib.load(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    bare = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())
    bare.set_qform(None, code=0)
    bare.set_sform(None, code=0)
    path = tmp_path / "noforms.nii.gz"
    nib.save(bare, path)
    with pytest.raises(InvalidInputError, match="neither qform nor sform"):
        read_nifti(path)
    code, _, err = run_in_process(["infer", str(path), "--organ", "liver", "--out", str(tmp_path / "o")], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 3 and last.startswith(f"error: {path}: NIfTI has neither"), err
    assert last.endswith("pass the DICOM series"), err
    assert "Traceback" not in err
    assert [p.name for p in (tmp_path / "o" / "noforms").iterdir()] == ["summary.json"]  # the failure, recorded


@pytest.mark.parametrize(("content", "message"), [(b"", r"empty file \(0 bytes\)"),
                                                  (b"a text file\n", "not a gzip file, although its name ends in .gz")])
def test_a_nifti_gz_that_is_not_gzip_says_so(tmp_path: Path, content: bytes, message: str) -> None:
    """Not "truncated or corrupt": the file was never a .nii.gz (a reviewer's text file named one)."""
    path = tmp_path / "x.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        read_nifti(path)


def test_an_affine_with_a_zero_axis_is_named_without_a_raw_numpy_warning(tmp_path: Path) -> None:
    """An all-zero sform was called "shear", after numpy's RuntimeWarning (divide by zero) reached the console."""
    import warnings

    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4))
    img.set_sform(np.zeros((4, 4)), code=1)
    nib.save(img, tmp_path / "z.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidInputError, match="zero-length or non-finite axis"):
            read_nifti(tmp_path / "z.nii.gz")


def test_gzip_data_named_nii_or_gzipped_twice_is_named_and_nibabel_stays_quiet(shared, tmp_path, capfd) -> None:
    """A re-probe saw nibabel's raw log lines ("sizeof_hdr should be 348") on stderr, then a misleading cause."""
    import gzip

    data = (shared / "ct/totalseg_example_ct_sm/image.nii.gz").read_bytes()
    (tmp_path / "renamed.nii").write_bytes(data)
    (tmp_path / "double.nii.gz").write_bytes(gzip.compress(data))
    (tmp_path / "junk.nii").write_bytes(bytes(range(256)) * 2)
    for name in ("renamed.nii", "double.nii.gz"):
        with pytest.raises(InvalidInputError, match="gzip-compressed data inside, not a NIfTI header"):
            read_nifti(tmp_path / name)
    with pytest.raises(InvalidInputError, match="not a readable NIfTI file"):
        read_nifti(tmp_path / "junk.nii")
    out, err = capfd.readouterr()
    assert out == "" and err == "", err
