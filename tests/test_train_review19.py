"""Defects of the nineteenth ML-engineer review of `medseg train` and export, each checked on a real tiny run
(the 4-iteration CI config of test_train_integrity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from medseg.errors import InvalidInputError
from medseg.train.export import export_model
from medseg.train.manifest import check_manifest, load_manifest, verify_manifest
from medseg.train.runner import run_training
from tests.test_train_integrity import MANIFEST, env, write_config  # noqa: F401  (env: module fixture used by `run19`)


@pytest.fixture(scope="module")
def run19(env: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A finished 4-iteration run in `run19/run` (config `run19/cfg.yaml`)."""
    tmp = tmp_path_factory.mktemp("run19")
    run_training(write_config(tmp), tmp / "run")
    return tmp


# 1. export ships only the run's own best weights


def test_summary_records_weights_digests_and_export_refuses_other_weights(run19: Path, tmp_path: Path) -> None:
    from medseg.digests import file_sha256

    summary = json.loads((run19 / "run/summary.json").read_text())
    assert summary["best_weights_sha256"] == file_sha256(run19 / "run/best_weights.pt")
    assert summary["last_checkpoint_sha256"] == file_sha256(run19 / "run/checkpoints/last.pt")
    card = export_model(run19 / "run", tmp_path / "ok", {})
    assert card.training["best_weights_sha256"] == summary["best_weights_sha256"]
    zero = {k: v * 0 if v.is_floating_point() else v for k, v in torch.load(run19 / "run/best_weights.pt").items()}
    torch.save(zero, tmp_path / "other.pt")
    with pytest.raises(InvalidInputError, match="not the run's best weights"):
        export_model(run19 / "run", tmp_path / "m2", {}, weights=tmp_path / "other.pt")
    copy = tmp_path / "copy"
    shutil.copytree(run19 / "run", copy)
    shutil.copyfile(tmp_path / "other.pt", copy / "best_weights.pt")
    with pytest.raises(InvalidInputError, match="not the run's best weights"):
        export_model(copy, tmp_path / "m1", {})
    assert not (tmp_path / "m1/weights.pt").exists() and not (tmp_path / "m2/weights.pt").exists()


# 2. a kill after an improving validation (best.pt written, last.pt not yet) still resumes


def test_best_checkpoint_also_writes_last_and_a_newer_best_is_resumed_from(env: Any, tmp_path: Path) -> None:  # noqa: F811
    cfg = write_config(tmp_path, run={"checkpoint_every_min": 1e-6})
    early = tmp_path / "last_at_1.pt"
    events: list[tuple[str, dict[str, Any]]] = []

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        events.append((kind, fields))
        if kind == "checkpoint" and fields["iteration"] == 1:
            shutil.copyfile(fields["path"], early)

    run_training(cfg, tmp_path / "run", on_event=on_event)
    assert any(k == "checkpoint" and f["reason"] == "best" and f["iteration"] == 2 for k, f in events)
    shutil.copyfile(early, tmp_path / "run/checkpoints/last.pt")  # as after kill -9 between best.pt and last.pt
    (tmp_path / "run/summary.json").unlink()
    cfg6 = write_config(tmp_path, "cfg6.yaml", run={"checkpoint_every_min": 1e-6, "max_iterations": 6})
    info = run_training(cfg6, tmp_path / "run", resume=tmp_path / "run/checkpoints/last.pt")
    assert info.result is not None and info.result.progress.iteration == 6
    assert json.loads((tmp_path / "run/summary.json").read_text())["segments"][-1]["from_iteration"] >= 2


# 3. manifest files outside the data root


def _edited_manifest(tmp_path: Path, change: Any) -> Path:
    m = json.loads(MANIFEST.read_text())
    change(m["entries"][0])
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m))
    return path


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_manifest_paths_leaving_the_data_root_are_refused(shared: Path, tmp_path: Path, where: str) -> None:
    def change(e: dict[str, Any]) -> None:
        e["label"] = f"../data/{e['label']}" if where == "dotdot" else str(shared / e["label"])

    path = _edited_manifest(tmp_path, change)
    manifest, _ = load_manifest(path)
    with pytest.raises(InvalidInputError, match=r"case \S+: label path .*(absolute|'\.\.' part)") as exc:
        check_manifest(manifest, path)
    assert exc.value.exit_code == 3 and exc.value.path == path
    with pytest.raises(InvalidInputError, match=r"absolute|'\.\.' part"):
        verify_manifest(manifest, shared, path)


def test_manifest_file_linked_from_outside_the_data_root_is_refused(shared: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for top in {Path(e.label).parts[0] for e in load_manifest(MANIFEST)[0].entries}:
        (root / top).symlink_to(shared / top)
    manifest, _ = load_manifest(MANIFEST)
    with pytest.raises(InvalidInputError, match="resolves outside the data root") as exc:
        verify_manifest(manifest, root, MANIFEST)
    assert exc.value.exit_code == 3


# 8. case ids name cache files and MLflow metrics


@pytest.mark.parametrize("case_id", ["../../escaped", "Doe, John (MRN 4711)", "a..b", "x/y", ""])
def test_case_ids_outside_the_safe_alphabet_are_refused_up_front(tmp_path: Path, case_id: str) -> None:
    path = _edited_manifest(tmp_path, lambda e: e.update(case_id=case_id))
    manifest, _ = load_manifest(path)
    with pytest.raises(InvalidInputError, match=r"case_id may hold only letters") as exc:
        check_manifest(manifest, path)
    assert exc.value.exit_code == 3 and "\n" not in exc.value.one_line()


# 4 (and 7). no local path or patient-like name reaches MLflow, summary.json or the card; init_weights digested


def test_records_hold_references_not_local_paths_and_the_init_weights_digest(run19: Path, tmp_path: Path) -> None:
    import sqlite3

    from medseg.digests import file_sha256

    secret = tmp_path / "Smith_Jane"
    secret.mkdir()
    shutil.copyfile(MANIFEST, secret / "Smith_Jane_MRN4711.json")
    shutil.copyfile(run19 / "run/best_weights.pt", secret / "Doe_John_start.pt")
    start = str(secret / "Doe_John_start.pt")
    cfg = write_config(secret, manifest=secret / "Smith_Jane_MRN4711.json", init_weights=start,
                       run={"max_iterations": 2})  # fmt: skip
    run_training(cfg, tmp_path / "run", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    card = export_model(tmp_path / "run", tmp_path / "card", {})
    init_sha = file_sha256(secret / "Doe_John_start.pt")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["init_weights_sha256"] == init_sha and summary["init_weights"] == f"sha256:{init_sha}"
    assert summary["manifest_file"].startswith("sha256:") and summary["manifest"] == summary["manifest_file"]
    assert card.training["init_weights_sha256"] == init_sha
    db = sqlite3.connect(tmp_path / "mlflow.db")
    params = dict(db.execute("select key, value from params"))
    assert params["config.init_weights"] == f"sha256:{init_sha}"
    texts = [" ".join(str(v) for v in params.values()), (tmp_path / "run/summary.json").read_text(),
             (tmp_path / "card/model_card.yaml").read_text()]  # fmt: skip
    texts += [p.read_text(errors="replace") for p in (tmp_path / "mlartifacts").rglob("*") if p.suffix != ".pt"
              and p.is_file()]  # fmt: skip
    assert len(texts) > 5
    for text in texts:
        assert "Smith" not in text and "Doe_John" not in text and str(tmp_path) not in text


# 9. a run killed before its first checkpoint can be run again in its folder


def test_a_run_killed_before_its_first_checkpoint_is_restartable(env: Any, tmp_path: Path) -> None:  # noqa: F811
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    cfg = write_config(tmp_path, run={"max_iterations": 100000, "val_every": 100000})
    cmd = [str(Path(sys.executable).parent / "medseg"), "train", str(cfg), "--out", str(tmp_path / "run")]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not (tmp_path / "run/run.json").is_file() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / "run/run.json").is_file() and not (tmp_path / "run/checkpoints").exists()
    short = write_config(tmp_path, "short.yaml", run={"max_iterations": 2})
    shutil.copyfile(short, cfg)
    info = run_training(cfg, tmp_path / "run")
    assert info.result is not None and info.result.progress.iteration == 2
    statuses = sorted(s for (s,) in sqlite3.connect(tmp_path / "run/mlflow.db").execute("select status from runs"))
    assert statuses == ["FAILED", "FINISHED"]


# 5. label values labels.json does not name are refused, not made background


@pytest.mark.parametrize("gap", ["labels_json lacks a value", "one voxel of 99"])
def test_label_values_not_named_in_labels_json_are_refused(shared: Path, tmp_path: Path, gap: str) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.train.synth.prepare import prepare_label_map

    src = shared / "labels/btcv_8organ"
    names = json.loads((src / "labels.json").read_text())
    label = tmp_path / "label0001.nii.gz"
    if gap == "labels_json lacks a value":
        del names["3"]
        shutil.copyfile(src / "label0001.nii.gz", label)
    else:
        img = nib.load(src / "label0001.nii.gz")
        a = np.asarray(img.dataobj).copy()
        where = np.argwhere(a == 5)
        a[tuple(where[len(where) // 2])] = 99
        nib.save(nib.Nifti1Image(a, img.affine, img.header), label)
    (tmp_path / "labels.json").write_text(json.dumps(names))
    with pytest.raises(InvalidInputError, match=r"label values (3|99) are not named in labels.json") as exc:
        prepare_label_map(label, tmp_path / "labels.json", (3.0, 3.0, 3.0))
    assert exc.value.path == label and exc.value.exit_code == 3


# 6. data changed after verification is neither trained on nor cached


def test_a_source_changed_after_verification_is_refused_and_not_cached(shared: Path, tmp_path: Path) -> None:
    from medseg.train.realdata import cached_real_case
    from medseg.train.synth.prepare import cached_case

    m, _ = load_manifest(MANIFEST)
    lm = next(e for e in m.entries if e.kind == "label_map")
    other = next(e for e in m.entries if e.kind == "label_map" and e.labels_json == lm.labels_json and e is not lm)
    swapped = tmp_path / Path(lm.label).name
    shutil.copyfile(shared / other.label, swapped)  # read instead of the verified file
    with pytest.raises(InvalidInputError, match="changed while it was read") as exc:
        cached_case(swapped, shared / lm.labels_json, (3.0,) * 3, lm.sha256["label"], tmp_path / "cache",
                    lm.sha256["labels_json"])  # fmt: skip
    assert exc.value.exit_code == 3 and not list((tmp_path / "cache/anatomy").glob("*.npz"))
    e = next(e for e in m.entries if e.kind == "ct_pair" and e.split == "val")
    label = tmp_path / "liver.nii.gz"
    shutil.copyfile(shared / e.label, label)
    label.write_bytes(label.read_bytes() + b"\0")  # gzip ignores trailing zeros: same content read, other file
    with pytest.raises(InvalidInputError, match="changed while it was read"):
        cached_real_case(e.case_id, shared / str(e.image), label, int(e.liver_value or 1), (3.0,) * 3, e.sha256,
                         tmp_path / "cache")  # fmt: skip
    assert not list((tmp_path / "cache/real").glob("*.npz"))


# 10. an unusable MLflow store is found before anything is written into --out


def test_an_unusable_tracking_store_leaves_out_empty(env: Any, tmp_path: Path) -> None:  # noqa: F811
    from medseg.errors import ProcessingError

    cfg = write_config(tmp_path, run={"max_iterations": 2})
    (tmp_path / "afile").write_text("")
    with pytest.raises(ProcessingError, match="cannot start MLflow run"):
        run_training(cfg, tmp_path / "run", tracking_uri=f"sqlite:///{tmp_path / 'afile/mlflow.db'}")
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".train.lock"]
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ, "the failed store stays the process's tracking URI"


# 7. init_weights: digest recorded (see the test of #4) and checked on resume


def test_resume_with_other_init_weights_is_refused(run19: Path, tmp_path: Path) -> None:
    import sqlite3

    start = tmp_path / "start.pt"
    shutil.copyfile(run19 / "run/best_weights.pt", start)
    cfg = write_config(tmp_path, init_weights=str(start), run={"max_iterations": 2})
    run_training(cfg, tmp_path / "run")
    params = dict(sqlite3.connect(tmp_path / "run/mlflow.db").execute("select key, value from params"))
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert params["init_weights_sha256"] == summary["init_weights_sha256"]
    other = torch.load(start)
    key = next(k for k, v in other.items() if v.is_floating_point())
    other[key] = other[key] + 1
    torch.save(other, start)
    cfg4 = write_config(tmp_path, "cfg4.yaml", init_weights=str(start), run={"max_iterations": 4})
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(InvalidInputError, match="init_weights is not the file the run started from") as exc:
        run_training(cfg4, tmp_path / "run", resume=tmp_path / "run/checkpoints/last.pt")
    assert exc.value.exit_code == 3 and sorted(p.name for p in (tmp_path / "run").iterdir()) == before


# 11. python -m medseg.train.export / medseg.train.manifest: one line and the README's exit code, no traceback


def test_module_tools_refuse_in_one_line_with_the_exit_code(run19: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)

    export_model(run19 / "run", tmp_path / "dest", {})
    (tmp_path / "spec.yaml").write_text("name: x\ngroups:\n  - glob: labels/nothere/*.nii.gz\n    kind: label_map\n"
                                        "    labels_json: labels/nothere/labels.json\n    source: s\n    licence: l\n")
    cases = {
        2: tool("medseg.train.export", str(run19 / "run"), str(tmp_path / "dest")),
        3: tool("medseg.train.export", str(tmp_path), str(tmp_path / "dest2")),
        -3: tool("medseg.train.manifest", str(tmp_path / "spec.yaml"), str(tmp_path / "x.json")),
    }
    for code, r in cases.items():
        assert r.returncode == abs(code), r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not (tmp_path / "x.json").exists()


# 12. git_dirty covers data manifests and the pinned environment


@pytest.mark.parametrize("changed", ["data_manifests/m.json", "requirements.lock", "pyproject.toml", "medseg/a.py"])
def test_git_dirty_covers_manifests_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   changed: str) -> None:  # fmt: skip
    import subprocess

    from medseg.train import tracking
    from medseg.train.tracking import git_commit

    monkeypatch.setattr(tracking, "REPO", tmp_path)
    for name in ("data_manifests/m.json", "requirements.lock", "pyproject.toml", "medseg/a.py", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    (tmp_path / "notes.txt").write_text("y\n")
    assert git_commit()["git_dirty"] == "false"
    (tmp_path / changed).write_text("y\n")
    assert git_commit()["git_dirty"] == "true"


# 14. a resume into a folder where a training runs is refused as such (exit 2) before its checkpoints are read


def test_resume_into_a_folder_in_use_is_a_usage_error(run19: Path, tmp_path: Path) -> None:
    import fcntl
    import os

    from medseg.errors import UsageError

    run = tmp_path / "run"
    shutil.copytree(run19 / "run", run)
    (run / "checkpoints/last.pt").write_bytes((run / "checkpoints/last.pt").read_bytes()[:100])  # mid-write
    fd = os.open(run / ".train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(UsageError, match="another training is running"):
            run_training(run19 / "cfg.yaml", run, resume=run / "checkpoints/last.pt")
    finally:
        os.close(fd)


# 15. equal weights give equal bytes, whatever the file name


def test_equal_weights_written_to_different_files_have_equal_bytes(run19: Path, tmp_path: Path) -> None:
    from medseg.train.checkpoint import save_weights

    weights = torch.load(run19 / "run/best_weights.pt")
    save_weights(tmp_path / "a.pt", weights)
    save_weights(tmp_path / "other_name_weights.pt", weights)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name_weights.pt").read_bytes()


# 13. each segment records the run-length settings it ran with; a changed schedule is said


def test_segments_record_their_run_length_and_a_schedule_change_is_said(run19: Path, tmp_path: Path) -> None:
    shutil.copytree(run19 / "run", tmp_path / "run")
    cfg6 = write_config(tmp_path, "cfg6.yaml", run={"max_iterations": 6})
    lines: list[str] = []
    run_training(cfg6, tmp_path / "run", resume=tmp_path / "run/checkpoints/last.pt",
                 on_event=lambda kind, f: lines.append(str(f.get("message"))))  # fmt: skip
    segments = json.loads((tmp_path / "run/summary.json").read_text())["segments"]
    assert [s["run_length"]["max_iterations"] for s in segments] == [4, 6]
    assert segments[0]["run_length"]["config_sha256"] != segments[1]["run_length"]["config_sha256"]
    assert any("max_iterations 4 -> 6: the learning-rate schedule follows the new setting" in line for line in lines)
    card = export_model(tmp_path / "run", tmp_path / "model", {})
    assert card.training["segments"][1]["run_length"]["max_iterations"] == 6


# 17. an unknown organ in the config's labels is blamed on the config, before any work


def test_unknown_organ_in_labels_names_the_config(env: Any, tmp_path: Path) -> None:  # noqa: F811
    import yaml

    cfg = write_config(tmp_path, labels={0: "background", 1: "liver", 2: "spleeen"})
    data = yaml.safe_load(cfg.read_text())
    data["network"]["out_channels"] = 3
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInputError, match=r"labels: 'spleeen' is not an organ the training data can label") as e:
        run_training(cfg, tmp_path / "run")
    assert e.value.path == cfg and "labels" in (e.value.hint or "") and not (tmp_path / "run").exists()


def test_a_refused_export_over_a_model_leaves_it_as_it_was(run19: Path, tmp_path: Path) -> None:
    """An --overwrite export whose card failed after the weights were replaced left new weights beside the old card:
    the installed model no longer loaded (re-probe). The card is now checked before the folder changes."""
    export_model(run19 / "run", tmp_path / "model", {})
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    with pytest.raises(InvalidInputError, match="model card would not be valid"):
        export_model(run19 / "run", tmp_path / "model", [0.93], overwrite=True)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
