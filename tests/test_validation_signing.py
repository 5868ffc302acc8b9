"""DSSE/in-toto signing on a small folder (fast): the spec's PAE vector, and every tamper case named."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg.errors import UsageError
from medseg.keys import key_id, keypair_paths, load_private_key, load_public_key, write_keypair
from medseg.validation.report import SIGNATURE, dumps
from medseg.validation.signing import pae, sign_folder, signature_info, verify_folder

pytestmark = pytest.mark.req("REQ-018")


def test_pae_matches_the_dsse_specification_vector() -> None:
    # https://github.com/secure-systems-lab/dsse/blob/master/protocol.md (test vector)
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    write_keypair(*keypair_paths(tmp_path / "k", "qa"))
    write_keypair(*keypair_paths(tmp_path / "k", "other"))
    return keypair_paths(tmp_path / "k", "qa")[0], keypair_paths(tmp_path / "k", "other")[0]


def folder_with_report(path: Path, shared: Path) -> Path:
    """A validation-like folder: report.json and one real artifact (the CHAOS label) and a nested file."""
    (path / "cases" / "c1").mkdir(parents=True)
    (path / "cases" / "c1" / "liver.nii.gz").write_bytes((shared / "ct/radcttace_0697/liver.nii.gz").read_bytes())
    model = {"name": "liver", "version": "1.0.0", "weights_sha256": "ab" * 32}
    report = {
        "model": model,
        "set": {"set_digest": "cd" * 32},
        "acceptance": {"verdict": "fail"},
        "cases": [{"dice": 0.8}],
    }
    (path / "report.json").write_text(dumps(report))
    return path


def test_sign_then_verify_and_each_tamper_is_named(shared, tmp_path, keys) -> None:
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    info = signature_info("Ada Reviewer", "approved", private.public_key(), datetime(2026, 11, 29, 4, 0, tzinfo=UTC))
    env = sign_folder(folder, private, info)
    assert env["signatures"][0]["keyid"] == key_id(private.public_key()) == info.key_id
    public = load_public_key(keys[0].with_name("qa.key.pub"))
    ok = verify_folder(folder, public)
    assert ok.ok and ok.predicate["signed_at_utc"] == "2026-11-29T04:00:00Z" and ok.predicate["meaning"] == "approved"
    with pytest.raises(UsageError, match="already signed"):
        sign_folder(folder, private, info)
    other = load_public_key(keys[1].with_name("other.key.pub"))
    assert "signature does not verify" in verify_folder(folder, other).problems[0]
    (folder / "cases/c1/liver.nii.gz").unlink()
    assert verify_folder(folder, public).problems[0] == "cases/c1/liver.nii.gz: signed but missing"


def test_an_edited_envelope_fails(shared, tmp_path, keys) -> None:
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "reviewed", private.public_key()))
    env = json.loads((folder / SIGNATURE).read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["meaning"] = "approved"  # upgrade "reviewed" to "approved" without signing again
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (folder / SIGNATURE).write_text(json.dumps(env))
    public = private.public_key()
    assert not verify_folder(folder, public).ok


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_any_changed_byte_of_any_file_fails(shared, tmp_path_factory, seed, flip) -> None:
    folder = folder_with_report(tmp_path_factory.mktemp("v"), shared)
    private = load_private_key(keypair_paths(_keys(tmp_path_factory), "qa")[0])
    sign_folder(folder, private, signature_info("Ada", "approved", private.public_key()))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SIGNATURE)
    target = files[seed % len(files)]
    data = bytearray(target.read_bytes())
    data[seed % len(data)] ^= flip or 1
    target.write_bytes(bytes(data))
    problems = verify_folder(folder, private.public_key()).problems
    assert any(p.startswith(target.relative_to(folder).as_posix() + ":") for p in problems), problems


_KEYS: dict[str, Path] = {}


def _keys(factory: pytest.TempPathFactory) -> Path:
    if "dir" not in _KEYS:
        _KEYS["dir"] = factory.mktemp("keys")
        write_keypair(*keypair_paths(_KEYS["dir"], "qa"))
    return _KEYS["dir"]


def test_meaning_and_name_are_required(keys) -> None:
    public = load_private_key(keys[0]).public_key()
    with pytest.raises(UsageError, match="meaning"):
        signature_info("Ada", "looked at it", public)
    with pytest.raises(UsageError, match="printed name"):
        signature_info("  ", "approved", public)


@pytest.mark.parametrize("addition", ["empty folder", "link to a folder", "link to a file"])
def test_content_added_beside_the_signed_files_fails(shared, tmp_path, keys, addition) -> None:
    """An empty folder, or a link to a folder holding an 'addendum', once verified as intact: file digests do not
    see them (rglob does not descend into linked folders)."""
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "approved", private.public_key()))
    assert verify_folder(folder, private.public_key()).ok
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ADDENDUM.txt").write_text("the verdict is pass")
    if addition == "empty folder":
        (folder / "cases" / "later").mkdir()
    elif addition == "link to a folder":
        (folder / "cases" / "later").symlink_to(outside, target_is_directory=True)
    else:
        (folder / "ADDENDUM.txt").symlink_to(outside / "ADDENDUM.txt")
    problems = verify_folder(folder, private.public_key()).problems
    assert any(p.startswith(("cases/later", "ADDENDUM.txt")) for p in problems), problems


@pytest.mark.parametrize("content", ["", "{trunc", "[]", '{"payload": 3, "signatures": "x"}'])
def test_a_damaged_signature_file_fails_verification(shared, tmp_path, keys, content) -> None:
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "approved", private.public_key()))
    (folder / SIGNATURE).write_text(content)
    result = verify_folder(folder, private.public_key())
    assert not result.ok and "not a readable signature envelope" in result.problems[0]


def test_an_artifact_list_that_is_not_a_table_fails(shared, tmp_path, keys) -> None:
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "approved", private.public_key()))
    report = json.loads((folder / "report.json").read_text())
    (folder / "report.json").write_text(json.dumps(report | {"artifacts": list(report.get("artifacts", {}))}))
    problems = verify_folder(folder, private.public_key()).problems
    assert "report.json: its artifact list is not a table of names and digests" in problems


def _recorded(folder: Path, role: str) -> None:
    """A `validate` command in the audit trail with the folder's report.json as its input or its output."""
    from medseg.cli.audited import audited

    with audited("validate", {}) as rec:
        (rec.add_inputs if role == "input" else rec.add_outputs)([folder / "report.json"])


def test_sign_needs_report_json_as_an_output_of_a_recorded_validation(shared, tmp_path) -> None:
    """An edited report.json made the input of some validate run (e.g. as a set's lock file) was then signable:
    only an OUTPUT of a validate run counts."""
    from medseg.errors import IntegrityError
    from medseg.validation.report import artifacts
    from medseg.validation.signing import check_signable

    folder = folder_with_report(tmp_path / "v", shared)
    report = json.loads((folder / "report.json").read_text()) | {"artifacts": artifacts(folder)}
    (folder / "report.json").write_text(dumps(report))
    _recorded(folder, "input")
    with pytest.raises(IntegrityError, match="not an output of any `medseg validate` run"):
        check_signable(folder, "reviewed")
    _recorded(folder, "output")
    assert check_signable(folder, "reviewed")["artifacts"] == artifacts(folder)
    (folder / "cases" / "later").mkdir()
    with pytest.raises(IntegrityError, match="empty folder"):
        check_signable(folder, "reviewed")
    (folder / "cases" / "later").rmdir()
    os.mkfifo(folder / "cases" / "pipe")
    with pytest.raises(IntegrityError, match="not a regular file"):
        check_signable(folder, "reviewed")


def test_a_pipe_added_after_signing_fails_verification(shared, tmp_path, keys) -> None:
    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "approved", private.public_key()))
    os.mkfifo(folder / "cases" / "pipe")
    problems = verify_folder(folder, private.public_key()).problems
    assert "cases/pipe: not a regular file, not covered by the signature" in problems


def _recorded_report(path: Path, shared: Path, release: dict | None) -> Path:
    """A folder as `medseg validate` leaves it (artifacts listed, report.json recorded as a validate output), with
    the given release decision (None: a record without one)."""
    from medseg.validation.report import artifacts

    folder = folder_with_report(path, shared)
    report = json.loads((folder / "report.json").read_text()) | {"artifacts": artifacts(folder)}
    if release is not None:
        report["release"] = release
    (folder / "report.json").write_text(dumps(report))
    _recorded(folder, "output")
    return folder


NOT_SUPPORTED = {"supported": False, "reasons": ["acceptance fail (AC-01)", "no traceability matrix"]}


@pytest.mark.parametrize("release", [NOT_SUPPORTED, None], ids=["release-not-supported", "no-release-decision"])
def test_approval_of_a_record_that_does_not_support_release_is_refused(shared, tmp_path, release) -> None:
    """`report sign --meaning approved` signed a record whose own verdict was FAIL (validate exit 1), and verify
    then said 'report intact: approved ...; verdict fail'. 'reviewed' is still allowed on such a record."""
    from medseg.errors import IntegrityError
    from medseg.validation.signing import check_signable

    folder = _recorded_report(tmp_path / "v", shared, release)
    with pytest.raises(IntegrityError, match=r"does not support release.*cannot be signed as approved") as exc:
        check_signable(folder, "approved")
    assert exc.value.exit_code == 1 and exc.value.path == folder / "report.json"
    if release is not None:
        assert "acceptance fail (AC-01)" in exc.value.one_line()
    assert check_signable(folder, "reviewed")["acceptance"]["verdict"] == "fail"


def test_approval_of_a_record_that_supports_release_is_signed(shared, tmp_path) -> None:
    from medseg.validation.signing import check_signable

    folder = _recorded_report(tmp_path / "v", shared, {"supported": True, "reasons": []})
    assert check_signable(folder, "approved")["release"]["supported"] is True


def test_report_sign_approved_of_a_failed_validation_exits_1_and_writes_nothing(shared, tmp_path, keys, capsys) -> None:
    """The CLI: exit 1, one line naming report.json and what to do; nothing written (no signature, no report.html).
    Signing the real validation record as reviewed is in test_validation_report.py."""
    from cli_run import run_in_process

    folder = _recorded_report(tmp_path / "v", shared, NOT_SUPPORTED)
    before = sorted(p.name for p in folder.iterdir())
    args = ["--key", str(keys[0]), "--signer", "A. Reviewer"]
    code, _, err = run_in_process(["report", "sign", str(folder), *args, "--meaning", "approved"], capsys)
    assert code == 1, err
    assert err.strip().splitlines() == [
        f"error: {folder / 'report.json'}: the record does not support release: acceptance fail (AC-01); it cannot be"
        " signed as approved. Sign it --meaning reviewed, or fix what report.json's release reasons name and validate"
        " again"
    ], err
    assert sorted(p.name for p in folder.iterdir()) == before and "Traceback" not in err


def test_a_failed_report_verify_is_on_record_with_its_exit_code(shared, tmp_path, keys, capsys) -> None:
    """The audit record of `report verify` carries the exit the process gave (1 for a changed report), not 0."""
    from cli_run import run_in_process

    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore

    folder = folder_with_report(tmp_path / "v", shared)
    private = load_private_key(keys[0])
    sign_folder(folder, private, signature_info("Ada", "reviewed", private.public_key()))
    public = str(keys[0].with_name("qa.key.pub"))
    assert run_in_process(["report", "verify", str(folder), "--public-key", public], capsys)[0] == 0
    (folder / "report.json").write_text((folder / "report.json").read_text().replace("0.8", "0.9"))
    code, out, _ = run_in_process(["report", "verify", str(folder), "--public-key", public], capsys)
    assert code == 1 and "NOT intact" in out
    with AuditStore.open(load_config(), create=False) as store:
        ends = [r.body for r in store.records() if r.body["kind"] == "end" and r.body["command"] == "report verify"]
    assert [(e["exit_code"], e["outcome"]) for e in ends] == [(0, "success"), (1, "failure")]
