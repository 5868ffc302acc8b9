"""Defects a re-probe of the audit-trail, keys and infer fixes found (review 20, re-probe), one test or more each."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.audit import store as store_module
from medseg.audit.config import load_config
from medseg.audit.store import AuditStore
from medseg.audit.verify import verify_store
from medseg.cli.audited import audited
from medseg.errors import AuditError
from medseg.io.atomic import atomic_write_bytes


def _medseg(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "medseg", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _store_files(folder: Path) -> dict[str, bytes]:
    """The bytes of every file in the audit folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_outputs_onto_the_audit_store_are_refused(tmp_path: Path, shared: Path) -> None:
    """`audit export` onto audit.db or chain-anchor.log, and `keys secret` onto audit.db, with --overwrite replaced
    the trail and exited 0: each is refused, exit 2, and the store is untouched and still verifies."""
    audit = Path(os.environ["MEDSEG_AUDIT_DIR"])
    assert _medseg("keys", "generate", "--out", str(tmp_path / "k"), "--name", "a").returncode == 0
    assert _medseg("series", str(shared / "dicom" / "ct_series_totalsegmentator")).returncode == 0
    before = _store_files(audit)
    attempts = [
        ["audit", "export", str(audit / "audit.db"), "--key", str(tmp_path / "k" / "a.key"), "--overwrite"],
        ["audit", "export", str(audit / "chain-anchor.log"), "--key", str(tmp_path / "k" / "a.key"), "--overwrite"],
        ["keys", "secret", str(audit / "audit.db"), "--overwrite"],
        ["keys", "secret", str(audit / "sub" / "x.key")],
    ]
    for argv in attempts:
        done = _medseg(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert "audit store's folder" in done.stderr
    after = _store_files(audit)
    assert after["chain-anchor.log"].startswith(before["chain-anchor.log"])
    assert not (audit / "sub").exists()
    with AuditStore.open(load_config(), create=False) as store:
        assert verify_store(store).ok


def test_an_explicit_audit_dir_is_guarded_too(tmp_path: Path, shared: Path) -> None:
    """A store named with --audit-dir (not the environment) is guarded while the audited command runs."""
    other = tmp_path / "other-store"
    assert _medseg("keys", "generate", "--out", str(tmp_path / "k"), "--name", "a").returncode == 0
    env = {**os.environ, "MEDSEG_AUDIT_DIR": str(other)}
    assert _medseg("series", str(shared / "dicom" / "ct_series_totalsegmentator"), env=env).returncode == 0
    anchor = (other / "chain-anchor.log").read_bytes()
    done = _medseg("audit", "export", str(other / "chain-anchor.log"), "--key", str(tmp_path / "k" / "a.key"),
                   "--audit-dir", str(other), "--overwrite")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (other / "chain-anchor.log").read_bytes().startswith(anchor)


def test_a_failed_end_event_removes_only_what_the_command_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end event fails (another process holds the store's write lock past the busy timeout): the output the
    command created is removed, but not a recorded input registered as output, nor a file that existed before the
    block (overwritten, or extended like monitor.db); the hint says the store was busy, not 'free disk space'."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.5)
    scan, kept, extended, new = (tmp_path / n for n in ("scan.nii.gz", "kept.json", "monitor.db", "new.json"))
    for path in (scan, kept, extended):
        path.write_bytes(b"earlier")
    with pytest.raises(AuditError) as caught, audited("probe", {}) as rec:
        rec.add_inputs([scan])
        rec.will_write([extended])
        extended.write_bytes(b"earlier+more")
        atomic_write_bytes(kept, b"new", overwrite=True)
        atomic_write_bytes(new, b"new")
        rec.add_outputs([scan, kept, extended, new])
        lock = sqlite3.connect(load_config().db_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
    lock.execute("ROLLBACK")
    lock.close()
    assert scan.read_bytes() == b"earlier" and kept.read_bytes() == b"new"
    assert extended.read_bytes() == b"earlier+more"
    assert not new.exists()
    assert "removed 1 unaudited output file(s)" in caught.value.message
    assert "busy" in (caught.value.hint or "") and "free disk space" not in (caught.value.hint or "")


def test_convert_refuses_its_input_as_output(tmp_path: Path, shared: Path) -> None:
    """`convert scan.nii.gz scan.nii.gz --overwrite` replaced the only copy of the scan: refused, exit 2."""
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes((shared / "ct" / "totalseg_example_ct_sm" / "image.nii.gz").read_bytes())
    before = scan.read_bytes()
    done = _medseg("convert", str(scan), str(scan), "--overwrite")
    assert done.returncode == 2, done.stderr
    assert "output is the input" in done.stderr and scan.read_bytes() == before


def _end_events(command: str) -> list[dict]:
    """The end events of `command`, oldest first (read through the store, read-only)."""
    with AuditStore.open(load_config(), create=False) as store:
        return [r.body for r in store.records() if r.body["kind"] == "end" and r.body["command"] == command]


def test_ctrl_c_after_convert_wrote_its_output_still_records_it(tmp_path: Path, shared: Path) -> None:
    """Ctrl-C after the output was renamed into place but before `add_outputs` had digested it left a finished,
    unrecorded output: the output registered before writing is recorded by the (interrupted) end event."""
    out = tmp_path / "out.nii"
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "convert",
                             str(shared / "ct" / "chaos_ct_sample" / "image.nii.gz"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not out.exists() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    (end,) = _end_events("convert")
    assert out.exists(), "the output is complete: it was renamed into place before the interrupt"
    assert len(end["outputs"]) == 1, (proc.returncode, end["outcome"])


def test_another_organ_on_a_scan_without_the_upper_abdomen_is_refused(tmp_path: Path, shared: Path) -> None:
    """`--organ spleen` on a pelvis-only CT was served as a 199 ml "spleen" in the gluteal muscle (exit 0): the model's
    liver, predicted in the same run, is below organ_not_found_below_ml.liver, so the case is refused as
    organ_not_found (exit 5, no label map) whatever organ was requested; --force segments it; a scan that shows the
    upper abdomen is still served."""
    import nibabel as nib
    import numpy as np

    image = nib.load(shared / "ct" / "radcttace_1211" / "image.nii.gz")
    pelvis = tmp_path / "pelvis.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :110], image.affine), pelvis)
    done = _medseg("infer", str(pelvis), "--organ", "spleen", "--out", str(tmp_path / "out"))
    assert done.returncode == 5, done.stderr
    assert "organ_not_found" in done.stderr and "does not show the upper abdomen" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "pelvis").iterdir()) == ["preview.png", "summary.json"]
    forced = _medseg("infer", str(pelvis), "--organ", "spleen", "--out", str(tmp_path / "forced"), "--force")
    assert forced.returncode == 0, forced.stderr
    whole = _medseg("infer", str(shared / "ct" / "totalseg_example_ct_sm" / "image.nii.gz"), "--organ", "spleen",
                    "--out", str(tmp_path / "whole"))  # fmt: skip
    assert whole.returncode == 0 and "organ_not_found" not in whole.stderr, whole.stderr


def test_an_edited_copy_of_a_built_in_model_under_its_name_is_refused(tmp_path: Path) -> None:
    """A copied built-in model folder whose card was edited (wider volume_range_ml) but kept the built-in's name and
    version was served as that built-in: refused, exit 4; an unchanged copy and a re-versioned copy are served."""
    import shutil

    from medseg.errors import ProcessingError
    from medseg.models.registry import ZOO, resolve_model

    copy = tmp_path / "copy"
    shutil.copytree(ZOO / "abdomen-2.2", copy, ignore=shutil.ignore_patterns("int8", "weights.pt"))
    assert resolve_model(copy).card.version == "2.2.0"
    card = copy / "model_card.yaml"
    card.write_text(card.read_text() + "\n# site edit\n")
    with pytest.raises(ProcessingError, match=r"claims built-in model abdomen 2\.2\.0") as caught:
        resolve_model(copy)
    assert caught.value.exit_code == 4 and "own name or version" in (caught.value.hint or "")
    card.write_text(card.read_text().replace("\nversion: 2.2.0\n", "\nversion: 2.2.0-site1\n", 1))
    assert resolve_model(copy).card.version == "2.2.0-site1"


def test_a_batch_refusal_hint_names_the_case_to_rerun_alone(tmp_path: Path, shared: Path) -> None:
    """In a batch, "rerun with --force" on the folder failed with exit 2 (the served case's output exists): the
    hint names the refused case to rerun alone with --force, and that command works (exit 0)."""
    import nibabel as nib
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_small.nii.gz").write_bytes((shared / "ct" / "totalseg_example_ct_sm" / "image.nii.gz").read_bytes())
    image = nib.load(shared / "ct" / "radcttace_1211" / "image.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :110], image.affine), folder / "b_pelvis.nii.gz")
    done = _medseg("infer", str(folder), "--out", str(tmp_path / "out"))
    assert done.returncode == 5, done.stderr
    command = f"medseg infer {folder / 'b_pelvis.nii.gz'} --out {tmp_path / 'out'} --force"
    assert f"Rerun a refused case alone with --force, e.g. `{command}`" in done.stderr
    rerun = _medseg(*command.split()[1:])
    assert rerun.returncode == 0, rerun.stderr


def test_ctrl_c_in_a_batch_after_a_case_finished_records_its_outputs(tmp_path: Path, shared: Path) -> None:
    """Ctrl-C right after case 1 of a batch was written (while the batch waited for case 2's read) left case 1's
    files on disk with an end event listing 0 outputs: every finished file of the case is in the end event."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_small.nii.gz").write_bytes((shared / "ct" / "totalseg_example_ct_sm" / "image.nii.gz").read_bytes())
    (folder / "b_big.nii.gz").write_bytes((shared / "ct" / "chaos_ct_sample" / "image.nii.gz").read_bytes())
    first = tmp_path / "out" / "a_small"
    proc = subprocess.Popen([sys.executable, "-m", "medseg", "infer", str(folder), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not (first / "summary.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    (end,) = _end_events("infer")
    written = sorted(p.name for p in first.iterdir())
    assert written == ["liver.nii.gz", "preview.png", "summary.json"]
    assert len(end["outputs"]) >= len(written), (proc.returncode, end["outcome"], end["outputs"])


def test_long_valid_output_names_are_written(tmp_path: Path, shared: Path) -> None:
    """A valid 247-character output name, and a dotted UID-like name of about half that, failed with 'File name too
    long' (exit 4): the temporary name `.tmp-<name>-XXXXXXXX<all suffixes>` outgrew 255 bytes."""
    from medseg.io.atomic import temporary_prefix, temporary_suffix

    long_name = "a" * 240 + ".nii.gz"
    uid_name = ".".join(["1.2.840.113619.2.55.3.604688119.969"] * 3) + ".nii.gz"
    for name in (long_name, uid_name):
        done = _medseg("convert", str(shared / "ct" / "totalseg_example_ct_sm" / "image.nii.gz"), str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).stat().st_size > 0
    assert temporary_suffix(uid_name) == ".nii.gz" and len(temporary_prefix(long_name)) < 40
    secret = tmp_path / ("s" * 247 + ".key")
    assert _medseg("keys", "secret", str(secret)).returncode == 0 and secret.is_file()
    stale = tmp_path / f"{temporary_prefix(secret.name)}x1y2z3w4.key"  # what a killed write leaves
    stale.write_text("leftover")
    assert _medseg("keys", "secret", str(secret), "--overwrite").returncode == 0
    assert not stale.exists(), "keys' stale-temporary cleanup still finds a long name's leftovers"


def test_key_folder_is_private_and_a_writable_one_is_refused(tmp_path: Path, shared: Path) -> None:
    """`keys generate` under umask 000 made a world-writable key folder (anyone could replace the key): the folder
    medseg creates is 0700, and a signing key in a folder others can write is refused (exit 2)."""
    keys = tmp_path / "new" / "keys"
    done = subprocess.run(["sh", "-c", 'umask 000 && exec "$0" -m medseg keys generate --out "$1" --name a',
                           sys.executable, str(keys)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    assert _medseg("series", str(shared / "dicom" / "ct_series_totalsegmentator")).returncode == 0
    keys.chmod(0o777)
    refused = _medseg("audit", "export", str(tmp_path / "snap.json"), "--key", str(keys / "a.key"))
    assert refused.returncode == 2 and "can be written by other users" in refused.stderr, refused.stderr
    assert not (tmp_path / "snap.json").exists()
    keys.chmod(0o700)
    assert _medseg("audit", "export", str(tmp_path / "snap.json"), "--key", str(keys / "a.key")).returncode == 0


def test_operator_names_with_joiners_are_accepted_and_controls_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Persian name spelt with ZERO WIDTH NON-JOINER was refused as a control character: ZWNJ and ZWJ are
    accepted; control characters, bidi overrides and isolates and line/paragraph separators still are not."""
    from medseg.errors import UsageError

    for name in ("محمد\u200cرضا Karimi", "क\u094d\u200dष Rao"):
        monkeypatch.setenv("MEDSEG_OPERATOR", name)
        assert load_config().operator == name
    for bad in ("a\nb", "a\u202eb", "a\u2066b", "a\u2028b", "a\u2029b", "a\x7fb"):
        monkeypatch.setenv("MEDSEG_OPERATOR", bad)
        with pytest.raises(UsageError, match="control or format character"):
            load_config()


def test_a_dangling_audit_or_anchor_link_is_named_in_one_line(tmp_path: Path, shared: Path) -> None:
    """MEDSEG_AUDIT_DIR (or the anchor folder) as a dangling symbolic link gave 'File exists ... free disk space':
    one line naming the dangling link, exit 4, nothing created where it points."""
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    series = str(shared / "dicom" / "ct_series_totalsegmentator")
    for env in ({"MEDSEG_AUDIT_DIR": str(dangling)},
                {"MEDSEG_AUDIT_DIR": str(tmp_path / "a1"), "MEDSEG_AUDIT_ANCHOR_DIR": str(dangling)}):  # fmt: skip
        done = _medseg("series", series, env={**os.environ, **env})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 4 and len(lines) == 1, done.stderr
        assert "dangling symbolic link" in lines[0] and "free disk space" not in lines[0]
    assert not (tmp_path / "nowhere").exists()


def test_readme_exit_code_5_names_organ_not_found() -> None:
    """README's exit-code row 5 lacked organ_not_found, a refusal flag that exits 5."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| 5 |")]
    assert "`organ_not_found`" in row
