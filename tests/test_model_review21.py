"""Review 21 of the model lifecycle (train -> export -> models -> infer --model): each test reproduces one defect on
real files, a real audit store and real torch loads (the CI config of test_train_integrity, 8 iterations)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medseg.audit.config import load_config
from medseg.audit.query import RecordFilter, query_records
from medseg.audit.store import AuditStore
from medseg.errors import AuditError, InvalidInputError, ProcessingError
from medseg.models.card import ModelCard
from medseg.models.registry import CARD_NAME, resolve_model, sha256_file
from medseg.train.export import NOT_AUDITED, export_model
from medseg.train.export import main as export_main
from tests.test_train_integrity import MANIFEST, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MEDSEG_CACHE_DIR=str(tmp / "cache"), MEDSEG_AUDIT_DIR=str(tmp / "audit"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")  # fmt: skip
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`medseg train` (audited, subprocess) into `--out link`, a symlink to `real`, on a copy of the CI manifest
    whose description is edited after the first validation, while the run goes on."""
    tmp = tmp_path_factory.mktemp("review21")
    manifest = tmp / "manifest.json"
    shutil.copyfile(MANIFEST, manifest)
    loaded = sha256_file(manifest)
    cfg = write_config(tmp, manifest=manifest, run={"max_iterations": 8, "val_every": 2})
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    proc = subprocess.Popen([str(BIN / "medseg"), "train", str(cfg), "--out", str(tmp / "link")], cwd=tmp,
                            env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp / "real/metrics.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    text = manifest.read_text()
    manifest.write_text(text.replace("CI smoke-test manifest", "EDITED DURING TRAINING"))
    edited = proc.poll() is None
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return {"tmp": tmp, "run": tmp / "real", "link": tmp / "link", "loaded": loaded, "edited_mid_run": edited,
            "manifest": manifest}  # fmt: skip


@pytest.fixture()
def audit_env(trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(trained["tmp"] / "audit"))
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(trained["tmp"] / "cache"))
    return trained


def _train_record(tmp: Path) -> Any:
    with AuditStore.open(load_config(tmp / "audit"), create=False) as store:
        return [r for r in query_records(store, RecordFilter(command="train")) if r.body.get("kind") == "end"][-1]


def _edited(path: Path, old: str, new: str) -> bytes:
    """Replace `old` by `new` in the file; return its original bytes (to restore)."""
    original = path.read_bytes()
    path.write_text(original.decode().replace(old, new))
    return original


# 1. metrics.jsonl and run.json are evidence: recorded by train, checked by export, their digests on the card


def test_edited_validation_log_or_run_json_of_an_audited_run_is_refused(audit_env: dict[str, Any],
                                                                         tmp_path: Path) -> None:  # fmt: skip
    run = audit_env["run"]
    for name, old, new in (("metrics.jsonl", '"dice": 0.', '"dice": 0.999'),
                           ("run.json", '"mlflow_run_id": "', '"mlflow_run_id": "deadbeef')):  # fmt: skip
        original = _edited(run / name, old, new)
        try:
            with pytest.raises(InvalidInputError, match=re.escape(f"{name} is not the file the audit trail recorded")):
                export_model(run, tmp_path / name, {})
        finally:
            (run / name).write_bytes(original)
        assert not (tmp_path / name / "weights.pt").exists()


def test_validation_score_at_best_must_be_the_summary_best_score(audit_env: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    shutil.copytree(audit_env["run"], tmp_path / "copy")  # moved: no audit record, so only the cross-check can tell
    summary = json.loads((tmp_path / "copy/summary.json").read_text())
    lines = (tmp_path / "copy/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        if r["iteration"] == summary["best_iteration"]:
            r["val_score"] = 0.999
    (tmp_path / "copy/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InvalidInputError, match="validation score at the best iteration"):
        export_model(tmp_path / "copy", tmp_path / "m", {})


def test_card_records_the_digests_of_its_evidence_files(audit_env: dict[str, Any], tmp_path: Path) -> None:
    run = audit_env["run"]
    export_main([str(run), str(tmp_path / "plain")])
    exported = sha256_file(tmp_path / "plain/weights.pt")
    accuracy = json.loads((REPO / "docs/abdomen-2.1.0-accuracy.json").read_text()) | {"weights_sha256": exported}
    (tmp_path / "a.json").write_text(json.dumps(accuracy))
    export_main([str(run), str(tmp_path / "m"), "--accuracy", str(tmp_path / "a.json")])
    card = ModelCard.load(tmp_path / "m" / CARD_NAME)
    assert card.training["evidence_sha256"] == {
        "summary.json": sha256_file(run / "summary.json"), "metrics.jsonl": sha256_file(run / "metrics.jsonl"),
        "run.json": sha256_file(run / "run.json"), "--accuracy": sha256_file(tmp_path / "a.json")}  # fmt: skip
    outputs = {o["ref"] for o in _train_record(audit_env["tmp"]).body["outputs"]}
    assert len(outputs) == 4


# 2. the audit-trail check does not depend on how the run folder is spelled


def test_run_trained_through_a_symlink_is_found_by_its_real_path_and_by_the_link(audit_env: dict[str, Any],
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    seq = _train_record(audit_env["tmp"]).seq
    for i, folder in enumerate((audit_env["run"], audit_env["link"])):
        assert export_model(folder, tmp_path / f"m{i}", {}).training["audit_record"]["seq"] == seq
    (tmp_path / "alias").symlink_to(audit_env["run"])
    original = _edited(audit_env["run"] / "summary.json", '"stopped_by": "', '"stopped_by": "edited ')
    try:
        with pytest.raises(InvalidInputError, match=r"summary\.json is not the file the audit trail recorded"):
            export_model(tmp_path / "alias", tmp_path / "m2", {})
    finally:
        (audit_env["run"] / "summary.json").write_bytes(original)


# 7. the train record holds the manifest trained on, not the file as it is at the end


def test_train_record_holds_the_manifest_digest_taken_at_load(audit_env: dict[str, Any]) -> None:
    assert audit_env["edited_mid_run"], "the run ended before the manifest could be edited"
    assert sha256_file(audit_env["manifest"]) != audit_env["loaded"]
    inputs = [i["sha256"] for i in _train_record(audit_env["tmp"]).body["inputs"]]
    summary = json.loads((audit_env["run"] / "summary.json").read_text())
    assert audit_env["loaded"] in inputs and summary["manifest_sha256"] == audit_env["loaded"]
    assert sha256_file(audit_env["manifest"]) not in inputs


# 8. an export is audited


def test_export_writes_a_model_export_audit_record(audit_env: dict[str, Any], tmp_path: Path) -> None:
    export_main([str(audit_env["run"]), str(tmp_path / "m")])
    with AuditStore.open(load_config(), create=False) as store:
        end = [r for r in query_records(store, RecordFilter(command="model-export")) if r.body["kind"] == "end"][-1]
    digests = {o["sha256"] for o in end.body["outputs"]}
    assert {sha256_file(tmp_path / "m/weights.pt"), sha256_file(tmp_path / "m" / CARD_NAME)} <= digests
    assert sha256_file(audit_env["run"] / "summary.json") in {i["sha256"] for i in end.body["inputs"]}
    assert end.body["exit_code"] == 0


# 11. a damaged audit store stops export with exit 4, as every other command


def test_export_against_a_damaged_audit_store_is_an_audit_error(audit_env: dict[str, Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit/audit.db").write_bytes(os.urandom(4096))
    monkeypatch.setenv("MEDSEG_AUDIT_DIR", str(tmp_path / "audit"))
    with pytest.raises(AuditError) as exc:
        export_model(audit_env["run"], tmp_path / "m", {})
    assert exc.value.exit_code == 4
    r = subprocess.run([sys.executable, "-m", "medseg.train.export", str(audit_env["run"]), str(tmp_path / "m")],
                       env={**os.environ}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 4, r.stderr


def test_a_moved_run_is_still_said_not_audited(audit_env: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(audit_env["run"], tmp_path / "moved")
    assert export_model(tmp_path / "moved", tmp_path / "m", {}).training["audit_record"] == NOT_AUDITED


# 3. the weights loaded are the bytes digested


def user_model(folder: Path, source: str = "liver") -> Path:
    """A copy of a built-in model under its own version (a user's --model folder)."""
    shutil.copytree(REPO / "medseg/models/zoo" / source, folder)
    card = folder / CARD_NAME
    card.write_text(card.read_text().replace("\nversion: 1.0.0\n", "\nversion: 1.0.0-local\n", 1))
    return folder


def set_weights(folder: Path, state: dict[str, Any]) -> None:
    """Save `state` as the folder's weights.pt and put its digest on the card."""
    torch.save(state, folder / "weights.pt")
    card = yaml.safe_load((folder / CARD_NAME).read_text())
    card["weights"]["sha256"] = sha256_file(folder / "weights.pt")
    (folder / CARD_NAME).write_text(yaml.safe_dump(card, sort_keys=False))


def test_weights_swapped_after_the_digest_read_are_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.models import network

    folder = user_model(tmp_path / "m")
    original = torch.load(folder / "weights.pt", weights_only=True)
    torch.save({k: v.flip(0).clone() if v.ndim else v for k, v in original.items()}, tmp_path / "evil.pt")
    build = network.build_network

    def build_then_swap(spec: Any) -> Any:  # a writer renaming another file over weights.pt after the digest read
        os.replace(tmp_path / "evil.pt", folder / "weights.pt")
        return build(spec)

    monkeypatch.setattr(network, "build_network", build_then_swap)
    net = resolve_model(folder).load_network()
    assert sha256_file(folder / "weights.pt") != resolve_model(folder).card.weights.sha256  # the swap happened
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k].float(), v.float()) for k, v in original.items())


# 10. model-folder faults name the weights file in one line (exit 4), never an internal error


def test_pickled_code_in_weights_is_a_processing_error_naming_the_weights(tmp_path: Path) -> None:
    folder = user_model(tmp_path / "m")
    set_weights(folder, {"x": CodeInPickle(tmp_path / "pwned")})
    with pytest.raises(ProcessingError, match="not a plain torch state_dict") as exc:
        resolve_model(folder).load_network()
    assert exc.value.path == folder / "weights.pt" and "\n" not in exc.value.one_line()
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_the_cards_network_are_a_processing_error(tmp_path: Path) -> None:
    folder = user_model(tmp_path / "m")
    card = yaml.safe_load((folder / CARD_NAME).read_text())
    card["network"]["channels"] = [c * 2 for c in card["network"]["channels"]]
    (folder / CARD_NAME).write_text(yaml.safe_dump(card, sort_keys=False))
    with pytest.raises(ProcessingError, match="do not fit the card's network") as exc:
        resolve_model(folder).load_network()
    assert exc.value.path == folder / "weights.pt" and exc.value.exit_code == 4


class CodeInPickle:
    """An object whose unpickling would run a command (what weights_only refuses)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


# 4. the export cache is owner-only, a shared-writable one refused, and the exported files' digests recorded


def tiny_model(folder: Path) -> Any:
    """A small random UNet model folder (fast to export) resolved as a user model."""
    sys.path.insert(0, str(REPO / "tests"))
    from infer_fixtures import make_model_folder

    return resolve_model(make_model_folder(folder, seed=5, roi=(32, 32, 32), channels=(4, 8, 16), strides=(2, 2)))


def test_export_cache_is_owner_only_and_its_file_digests_reach_the_runtime_info(tmp_path: Path) -> None:
    from medseg.infer.runtime import accelerated_runner

    runner = accelerated_runner(tiny_model(tmp_path / "m"), "openvino", 1, tmp_path / "cache")
    folder = Path(runner.info["cache"])
    assert runner.info["files_sha256"] == {n: sha256_file(folder / n) for n in ("model.xml", "model.bin")}
    for part in (tmp_path / "cache", tmp_path / "cache/openvino", folder):
        assert part.stat().st_mode & 0o077 == 0, part


def test_a_cache_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    from medseg.infer.runtime import accelerated_runner

    model = tiny_model(tmp_path / "m")
    (tmp_path / "cache/openvino").mkdir(parents=True)
    (tmp_path / "cache/openvino").chmod(0o777)
    with pytest.raises(ProcessingError, match="writable by other users") as exc:
        accelerated_runner(model, "openvino", 1, tmp_path / "cache")
    assert exc.value.path == tmp_path / "cache/openvino" and exc.value.exit_code == 4
    assert list((tmp_path / "cache/openvino").iterdir()) == []


# 12. an export that cannot be written (full disk) names the cache folder and leaves no staging folder behind

FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from medseg.errors import MedsegError
from medseg.infer.runtime import accelerated_runner
from medseg.models.registry import resolve_model
model = resolve_model(Path(sys.argv[1]))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    accelerated_runner(model, "openvino", 1, Path(sys.argv[2]))
except MedsegError as exc:
    print(type(exc).__name__, exc.exit_code, exc.one_line())
"""


def test_an_export_on_a_full_cache_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    tiny_model(tmp_path / "m")
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "m"), str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.stdout.startswith("ProcessingError 4 "), r.stdout + r.stderr[-2000:]
    assert f"{tmp_path / 'cache/openvino'}: cannot write the openvino export" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1
    assert list((tmp_path / "cache/openvino").iterdir()) == []


# 5, 6, 10. a user card inconsistent with its network, or with values out of range, is one line naming the field


def edited_card(folder: Path, source: str, **changes: Any) -> Path:
    """A user copy of a built-in model with `changes` (dotted field -> value) applied to its card."""
    user_model(folder, source)
    card = yaml.safe_load((folder / CARD_NAME).read_text())
    card["version"] = card["version"] + "-local"
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = card
        for part in parents:
            target = target[part]
        target[last] = value
    (folder / CARD_NAME).write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


CARD_FAULTS = {
    "label_beyond_outputs": ("liver", {"labels": {0: "background", 1: "liver", 2: "spleen"}}, "labels: keys must"),
    "labels_reordered": ("abdomen-2.2", {"labels": {0: "background", 1: "spleen", 2: "liver", 3: "stomach",
                                                    4: "kidney", 5: "gallbladder", 6: "pancreas", 7: "heart"}},
                         "labels: not the labels the weights were trained with"),
    "window_equal": ("liver", {"intensity": {"a_min": 300.0, "a_max": 300.0}}, "intensity: a_min"),
    "window_reversed": ("liver", {"intensity": {"a_min": 300.0, "a_max": -200.0}}, "intensity: a_min"),
    "spacing_zero": ("liver", {"spacing": [0.0, 3.0, 3.0]}, "spacing: every spacing must be > 0"),
    "spacing_negative": ("liver", {"spacing": [-3.0, 3.0, 3.0]}, "spacing: every spacing must be > 0"),
    "roi_zero": ("liver", {"roi_size": [0, 96, 96]}, "roi_size: every roi_size must be >= 1"),
    "range_reversed": ("liver", {"volume_range_ml": [4500.0, 600.0]}, "volume_range_ml: must be"),
    "unknown_key": ("liver", {"foo_unknown": 1}, "foo_unknown: unknown key"),
}


@pytest.mark.parametrize("fault", sorted(CARD_FAULTS))
def test_a_card_fault_is_one_processing_error_naming_card_and_field(tmp_path: Path, fault: str) -> None:
    source, changes, field = CARD_FAULTS[fault]
    folder = edited_card(tmp_path / "m", source, **changes)
    with pytest.raises(ProcessingError) as exc:
        resolve_model(folder)
    line = exc.value.one_line()
    assert exc.value.path == folder / CARD_NAME and exc.value.exit_code == 4 and "\n" not in line
    assert f"invalid model card: {field}" in line, line


def test_infer_with_a_reordered_card_is_refused_before_any_output(tmp_path: Path, shared: Path) -> None:
    folder = edited_card(tmp_path / "m", "abdomen-2.2", **{"labels": CARD_FAULTS["labels_reordered"][1]["labels"]})
    image = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    r = subprocess.run([str(BIN / "medseg"), "infer", str(image), "--organ", "liver", "--model", str(folder),
                        "--backend", "torch", "--out", str(tmp_path / "out"), "--no-preview"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 4, r.stderr[-2000:]
    assert f"{folder / CARD_NAME}: invalid model card: labels: not the labels" in r.stderr
    assert not (tmp_path / "out/image/labels.nii.gz").exists()


# 9. `models list --verify` checks what `medseg infer` checks: the built-in card's digest and the INT8 files


def list_verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    from medseg.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["models", "list", "--json", "--verify"])
    return int(exc.value.code or 0), json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("altered", ["card", "int8"])
def test_list_verify_reports_an_altered_builtin_card_or_int8_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  altered: str) -> None:  # fmt: skip
    from medseg.models import registry

    shutil.copytree(REPO / "medseg/models/zoo/liver", tmp_path / "zoo/liver")
    monkeypatch.setattr(registry, "ZOO", tmp_path / "zoo")
    code, cards = list_verify(capsys)
    assert code == 0 and cards[0]["verified"] is True and cards[0]["weights_verified"] is True
    if altered == "card":
        card = tmp_path / "zoo/liver" / CARD_NAME
        card.write_text(card.read_text().replace("a_min: -200.0", "a_min: -1000.0", 1))
    else:
        int8 = next((tmp_path / "zoo/liver/int8").glob("*.bin"))
        int8.write_bytes(int8.read_bytes()[:-4] + b"oops")
    code, cards = list_verify(capsys)
    assert code == 4 and cards[0]["verified"] is False and cards[0]["weights_verified"] is True
    assert ("built-in model card altered" if altered == "card" else "INT8 model file") in cards[0]["problem"]
