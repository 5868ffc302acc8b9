"""The fast header path: worker processes, one read per file, values copied untouched, one sync per run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cli_run import run_cli

from medseg.deid.keyed import KeyedMapper
from medseg.deid.runner import PENDING, DeidSettings, deidentify_tree, discover, input_digest
from medseg.deid.writer import source_transfer_syntax
from tests.deid_fixtures import SECRET, corpus_runs, run_deid, tree_digest

MR = ("deid", "tcia_pseudo_phi_mr", "original")


@pytest.fixture(scope="session")
def corpus_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return corpus_runs(shared, tmp_path_factory)


def test_two_workers_write_the_same_bytes_as_one(corpus_run, tmp_path: Path) -> None:
    src, single, _ = corpus_run["dicom"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = deidentify_tree(src, tmp_path / "out", SECRET, DeidSettings(scan_pixels=False, workers=2))
    assert result.count("written") >= 150
    assert tree_digest(tmp_path / "out") == tree_digest(single)
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_pixel_data_and_untouched_values_are_copied_exactly(corpus_run) -> None:
    """Kept elements are written without being parsed: their bytes (pixel data included) equal the input's."""
    compared = big_endian = 0
    for name in ("deid", "dicom"):
        src, out, result = corpus_run[name]
        by_sha = {r.input_digest: r for r in result.records if r.status == "written"}
        for path in discover(src).files:
            data = path.read_bytes()
            rec = by_sha.get(input_digest(KeyedMapper(SECRET), hashlib.sha256(data).hexdigest()))
            if rec is None:
                continue
            original = pydicom.dcmread(path, force=True)
            if "PixelData" not in original:
                continue
            output = pydicom.dcmread(out / rec.output)
            if source_transfer_syntax(original) == pydicom.uid.ExplicitVRBigEndian:
                # rewritten little endian: the bytes differ, the values may not (they came out byte-swapped)
                assert np.array_equal(output.pixel_array, original.pixel_array), rec.output
                big_endian += 1
                continue
            assert output.PixelData == original.PixelData, rec.output
            for keyword in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "SliceThickness"):
                assert output.get(keyword) == original.get(keyword), (rec.output, keyword)
            compared += 1
    assert compared >= 150
    assert big_endian >= 1  # the shared data's MR_small_bigendian.dcm (deid review 18b #2)


def _kill_mid_run(src: Path, out: Path) -> None:
    """Start a two-worker run in another process that SIGKILLs itself and its workers right after the 3rd output got
    its final name (a crash or an OOM kill at a chosen point, not after a race with a polling loop)."""
    code = (
        "import os, signal, sys, warnings; from pathlib import Path; warnings.simplefilter('ignore');"
        "from medseg.deid.runner import DeidSettings, deidentify_tree;"
        "real, n = os.replace, [0]\n"
        "def replace(a, b, *args, **kwargs):\n"
        "    real(a, b, *args, **kwargs)\n"
        "    if Path(b).name.startswith('2.25.') and Path(b).suffix == '.dcm':\n"
        "        n[0] += 1\n"
        "        if n[0] == 3:\n"
        "            os.killpg(0, signal.SIGKILL)\n"
        "os.replace = replace\n"
        f"deidentify_tree(Path(sys.argv[1]), Path(sys.argv[2]), bytes.fromhex('{SECRET.hex()}'),"
        " DeidSettings(scan_pixels=False, workers=2))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out)], start_new_session=True)
    assert proc.wait(timeout=120) == -signal.SIGKILL, "the run was not killed at its 3rd output"
    assert len(list(out.rglob("2.25.*.dcm"))) == 3


def test_killed_run_leaves_only_whole_files_and_resumes_to_the_same_result(shared: Path, tmp_path: Path) -> None:
    src = shared.joinpath(*MR)
    full = tmp_path / "full"
    run_deid(src, full)
    part = tmp_path / "part"
    _kill_mid_run(src, part)
    assert not (part / "deid-manifest.json").exists()
    expected = tree_digest(full)
    for path in part.rglob("2.25.*.dcm"):
        rel = path.relative_to(part).as_posix()
        assert tree_digest(part)[rel] == expected[rel], f"{rel} is not the whole output"
    result = run_deid(src, part)
    assert not list(part.rglob(".tmp-*")) and not list((part / PENDING).iterdir())
    assert result.count("written") == len(list(discover(src).files))
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith((".deid-state", "deid-manifest"))}  # noqa: E731
    assert strip(tree_digest(part)) == strip(tree_digest(full))


def test_cli_refuses_negative_workers(shared: Path, tmp_path: Path, capsys) -> None:
    key = tmp_path / "k"
    key.write_text(SECRET.hex())
    key.chmod(0o600)
    code, out = run_cli(["deid", str(shared.joinpath(*MR)), str(tmp_path / "o"), "--key-file", str(key),
                         "--pixels", "off", "--workers", "-1"], capsys)  # fmt: skip
    assert code == 2 and "--workers" in out


@pytest.mark.parametrize("pixels", [False, True])  # fork for the header path, forkserver with the pixel scan
def test_workers_do_not_outlive_a_killed_run(shared: Path, tmp_path: Path, pixels: bool) -> None:
    """SIGKILL of the run alone (not its process group): its workers must exit too, not wait on its pipes for ever.

    The run parks itself in its first output's rename (it announces that in a file, then sleeps), so it is alive with
    its pool when the test kills it, however late the test gets to look (no window to hit)."""
    parked = tmp_path / "parked"
    code = (
        "import os, sys, time, warnings; from pathlib import Path; warnings.simplefilter('ignore');"
        "from medseg.deid.runner import DeidSettings, deidentify_tree;"
        "real = os.replace\n"
        "def replace(a, b, *args, **kwargs):\n"
        "    if Path(b).name.startswith('2.25.') and Path(b).suffix == '.dcm':\n"
        f"        Path({str(parked)!r}).write_text(str(os.getpid()))\n"
        "        time.sleep(600)\n"
        "    real(a, b, *args, **kwargs)\n"
        "os.replace = replace\n"
        f"deidentify_tree(Path(sys.argv[1]), Path(sys.argv[2]), bytes.fromhex('{SECRET.hex()}'),"
        f" DeidSettings(scan_pixels={pixels}, workers=2))"
    )
    src = shared / "ct" / "chaos_ct_sample" / "dicom"
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "out")], start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (parked.exists() and len(workers) >= 2):
            workers = _descendants(proc.pid, "python")
            time.sleep(0.05)
        assert parked.exists() and proc.poll() is None, "the run did not park in its first rename"
        assert len(workers) >= 2, f"no workers seen running beside the parked run: the test proves nothing {workers}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        alive = [pid for pid in workers if _alive(pid)]
        lines = [_cmdline(pid)[:120] for pid in alive]
        assert alive == [], f"outlived the killed run: {lines}"
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _descendants(pid: int, name: str) -> list[int]:
    """Processes below `pid` (any depth) whose command line mentions `name`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], {pid}
    while frontier:
        children = {c for c, p in parents.items() if p in frontier}
        found += [c for c in children if name in _cmdline(c)]
        frontier = children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("pixels", ["off", "scan"])
def test_a_run_whose_parent_is_pid_1_de_identifies(shared: Path, tmp_path: Path, pixels: str) -> None:
    """A container's entrypoint shell, tini or a systemd unit is PID 1 and the parent of `medseg deid`: the run must
    not take its parent for dead (it quit silently with exit 1, nothing written, when the death signal was armed
    on import)."""
    key = tmp_path / "k"
    key.write_text(SECRET.hex())
    key.chmod(0o600)
    src = shared / "ct" / "chaos_ct_sample" / "dicom"
    deid = [sys.executable, "-m", "medseg", "deid", str(src), str(tmp_path / "out"), "--key-file", str(key),
            "--pixels", pixels, "--workers", "2"]  # fmt: skip
    done = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", '"$@"; echo "exit $? under PID $$"', "sh",
                           *deid], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "under PID 1" in done.stdout, f"the shell is not PID 1: the test proves nothing ({done.stderr[-300:]})"
    assert "exit 0 under PID 1" in done.stdout, done.stdout + done.stderr[-2000:]
    assert (tmp_path / "out" / "deid-manifest.json").is_file()
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(list(src.rglob("*.dcm")))
