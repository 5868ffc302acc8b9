"""`medseg train` refuses what would make a wrong model look right: divergence, a false best after resume, a resume
with another config or manifest, manifest content errors, an occupied run folder, damaged checkpoints and caches."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from medseg.errors import InvalidInputError, ProcessingError, UsageError
from medseg.models.registry import resolve_model
from medseg.train.checkpoint import Progress, load_checkpoint, save_checkpoint
from medseg.train.config import load_config
from medseg.train.export import card_text, export_model
from medseg.train.manifest import check_manifest, load_manifest, verify_manifest
from medseg.train.runner import run_training

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANIFEST = REPO / "data_manifests/liver_ci.json"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A shared prepared-data cache and no MLflow URI from the caller's environment."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield os.environ.copy()
    mp.undo()


def write_config(folder: Path, name: str = "cfg.yaml", manifest: Path = MANIFEST, **sections: dict[str, Any]) -> Path:
    """configs/liver_ci.yaml shrunk to 4 iterations (validation at 2 and 4), with `sections` merged in."""
    cfg = yaml.safe_load((REPO / "configs/liver_ci.yaml").read_text())
    cfg["data"]["manifest"] = str(manifest)
    cfg["run"].update(max_iterations=4, val_every=2)
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(cfg))
    return folder / name


@pytest.fixture(scope="module")
def base(env: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration run in `base/run` (config `base/cfg.yaml`)."""
    tmp = tmp_path_factory.mktemp("base")
    run_training(write_config(tmp), tmp / "run")
    return tmp


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. divergence


def test_nan_loss_stops_the_run_and_writes_no_weights(env: Any, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, optim={"lr": 1.0e6}, run={"max_iterations": 20, "val_every": 100})
    with pytest.raises(ProcessingError, match=r"training diverged: the (loss|gradient norm) is not finite") as exc:
        run_training(cfg, tmp_path / "run")
    assert "\n" not in exc.value.one_line()
    assert not (tmp_path / "run/best_weights.pt").exists() and not (tmp_path / "run/summary.json").exists()
    db = sqlite3.connect(tmp_path / "run/mlflow.db")
    assert db.execute("select status from runs").fetchall() == [("FAILED",)]


def _nan_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


def test_non_finite_weights_are_refused_at_export_and_when_loading(base: Path, tmp_path: Path) -> None:
    torch.save(_nan_state(base / "run/best_weights.pt"), tmp_path / "nan.pt")
    with pytest.raises(InvalidInputError, match="not the run's best weights"):
        export_model(base / "run", tmp_path / "refused", {}, weights=tmp_path / "nan.pt")
    from medseg.train.export import save_half_precision

    with pytest.raises(InvalidInputError, match="not finite"):
        save_half_precision(tmp_path / "nan.pt", tmp_path / "nan16.pt")
    assert not (tmp_path / "refused/weights.pt").exists()
    card = export_model(base / "run", tmp_path / "model", {})
    torch.save(_nan_state(tmp_path / "model/weights.pt"), tmp_path / "model/weights.pt")
    from medseg.models.card import WeightsSpec
    from medseg.models.registry import sha256_file

    spec = WeightsSpec(file="weights.pt", sha256=sha256_file(tmp_path / "model/weights.pt"), storage="float16")
    (tmp_path / "model/model_card.yaml").write_text(card.model_copy(update={"weights": spec}).dump())
    with pytest.raises(ProcessingError, match="not finite"):
        resolve_model(tmp_path / "model").load_network()


# 2-3. resume


def test_resume_into_a_new_folder_keeps_the_true_best(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(base / "run", src)
    cfg_path = write_config(tmp_path, run={"max_iterations": 5})
    cfg, cfg_sha = load_config(cfg_path)
    state = load_checkpoint(src / "checkpoints/last.pt")
    from medseg.models.network import build_network

    net = build_network(cfg.network)
    net.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()})
    opt = torch.optim.AdamW(net.parameters())
    later = Progress(**{**state["progress"], "iteration": 5})
    man_sha = state["manifest_sha256"]
    save_checkpoint(src / "checkpoints/last.pt", net, opt, later, cfg_sha, man_sha, cfg.training_sha256())
    ref_best = torch.load(src / "best_weights.pt", weights_only=True)
    run_training(cfg_path, tmp_path / "new", resume=src / "checkpoints/last.pt")
    summary = json.loads((tmp_path / "new/summary.json").read_text())
    best = torch.load(tmp_path / "new/best_weights.pt", weights_only=True)
    assert summary["best_iteration"] == state["progress"]["best_iteration"] and summary["iterations"] == 5
    assert [seg["from_iteration"] for seg in summary["segments"]] == [0, 5], "each segment's commit is kept"
    assert all(torch.equal(best[k], ref_best[k]) for k in best), "best_weights.pt is the run's real best"
    assert (tmp_path / "new/checkpoints/best.pt").read_bytes() == (src / "checkpoints/best.pt").read_bytes()


def test_resume_after_a_kill_between_best_checkpoint_and_best_weights_rewrites_them(base: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    stale = {k: v + 1 if v.is_floating_point() else v for k, v in torch.load(run / "best_weights.pt").items()}
    torch.save(stale, run / "best_weights.pt")
    run_training(base / "cfg.yaml", run, resume=run / "checkpoints/last.pt")
    best = torch.load(run / "best_weights.pt", weights_only=True)
    ref = load_checkpoint(run / "checkpoints/best.pt")["model"]
    assert all(torch.equal(best[k], ref[k]) for k in best)


def test_resume_from_a_checkpoint_without_its_run_folder_is_refused(base: Path, tmp_path: Path) -> None:
    shutil.copyfile(base / "run/checkpoints/last.pt", tmp_path / "last.pt")
    with pytest.raises(InvalidInputError, match=r"lacks checkpoints/best\.pt"):
        run_training(base / "cfg.yaml", tmp_path / "new", resume=tmp_path / "last.pt")
    assert not (tmp_path / "new").exists()


def test_resume_with_another_config_or_manifest_is_refused_and_changes_nothing(base: Path, tmp_path: Path) -> None:
    before = _files(base / "run")
    other_lr = write_config(tmp_path, "lr.yaml", optim={"lr": 0.01})
    with pytest.raises(InvalidInputError, match="another config"):
        run_training(other_lr, base / "run", resume=base / "run/checkpoints/last.pt")
    m = json.loads(MANIFEST.read_text())
    m["entries"] = [e for e in m["entries"] if e["case_id"] != "amos_0013"]
    (tmp_path / "other.json").write_text(json.dumps(m))
    other_man = write_config(tmp_path, "man.yaml", manifest=tmp_path / "other.json")
    with pytest.raises(InvalidInputError, match="another manifest"):
        run_training(other_man, base / "run", resume=base / "run/checkpoints/last.pt")
    wider = write_config(tmp_path, "arch.yaml", network={"channels": [8, 16, 32]})
    with pytest.raises(InvalidInputError, match="another config"):
        run_training(wider, base / "run", resume=base / "run/checkpoints/last.pt")
    assert _files(base / "run") == before


def test_checkpoint_of_another_network_is_one_line_exit_3(base: Path, tmp_path: Path) -> None:
    from medseg.train.runner import check_resume

    cfg, sha = load_config(write_config(tmp_path, network={"channels": [8, 16, 32]}))
    state = load_checkpoint(base / "run/checkpoints/last.pt")
    state["training_sha256"] = cfg.training_sha256()
    with pytest.raises(InvalidInputError, match="does not fit the network") as exc:
        check_resume(state, base / "run/checkpoints/last.pt", cfg, sha, state["manifest_sha256"])
    assert exc.value.exit_code == 3 and "\n" not in exc.value.one_line()


# 7/15. damaged checkpoints are refused before any data preparation or MLflow run


def _flip_one_weight(src: Path, dest: Path) -> None:
    raw = bytearray(src.read_bytes())
    st = torch.load(src, weights_only=True)["model"]
    key = max((k for k in st if st[k].is_floating_point()), key=lambda k: st[k].numel())
    blob = st[key].contiguous().numpy().tobytes()
    off = raw.find(blob) + len(blob) // 8 * 4
    raw[off : off + 4] = np.float32(0.123).tobytes()
    dest.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flipped", "nan", "truncated"])
def test_damaged_checkpoint_is_refused_before_any_work(base: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    last = run / "checkpoints/last.pt"
    before = _files(run)
    if damage == "truncated":
        last.write_bytes(before["checkpoints/last.pt"][:60000])
        match = "truncated or corrupt"
    else:
        _flip_one_weight(base / "run/checkpoints/last.pt", last)
        if damage == "nan":
            raw = bytearray(last.read_bytes())
            i = raw.find(np.float32(0.123).tobytes())
            raw[i : i + 4] = np.float32("nan").tobytes()
            last.write_bytes(bytes(raw))
        match = "does not match its SHA-256"
    before["checkpoints/last.pt"] = last.read_bytes()
    with pytest.raises(InvalidInputError, match=match):
        run_training(base / "cfg.yaml", run, resume=last)
    assert _files(run) == before, "nothing written: no data preparation, no MLflow run"


def test_unknown_device_is_a_usage_error_before_any_work(base: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--device 'foo'"):
        run_training(base / "cfg.yaml", tmp_path / "run", device="foo")
    assert not (tmp_path / "run").exists()


@pytest.mark.disk_mb(1)
def test_checkpoint_on_a_full_disk_is_one_line_naming_the_file(small_disk: Path) -> None:
    net = torch.nn.Linear(600, 600)
    opt = torch.optim.AdamW(net.parameters())
    with pytest.raises(ProcessingError, match=r"cannot write checkpoint \(disk full\?\)") as exc:
        save_checkpoint(small_disk / "last.pt", net, opt, Progress(), "c", "m")
    assert exc.value.path == small_disk / "last.pt" and "\n" not in exc.value.one_line()
    assert list(small_disk.iterdir()) == []


# 4/16. manifest content


def _manifest(tmp_path: Path, change: Any) -> Path:
    m = json.loads(MANIFEST.read_text())
    change(m["entries"])
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(m))
    return path


def _pair(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in entries if e["kind"] == "ct_pair")


def _dup(entries: list[dict[str, Any]], **change: Any) -> None:
    entries.append({**_pair(entries), **change})


CONTENT_ERRORS = {
    "same case in train and val": (lambda es: _dup(es, case_id="again", split="val"), "same (image|label)"),
    "duplicate entry": (lambda es: _dup(es), "listed twice"),
    "image without digest": (lambda es: _pair(es)["sha256"].pop("image"), r"sha256 lacks \['image'\]"),
    "no digests": (lambda es: _pair(es).update(sha256={}), "sha256 lacks"),
    "unknown role": (lambda es: _pair(es)["sha256"].update(mask="0" * 64), r"sha256 has \['mask'\]"),
    "labels_json without digest": (lambda es: es[0]["sha256"].pop("labels_json"), "labels_json"),
    "no validation split": (lambda es: [e.update(split="train") for e in es], "validation split .* is empty"),
    "no training split": (lambda es: [e.update(split="val") for e in es], "training split .* is empty"),
}


@pytest.mark.parametrize("name", sorted(CONTENT_ERRORS))
def test_manifest_content_errors_are_refused_naming_manifest_and_case(tmp_path: Path, name: str) -> None:
    change, match = CONTENT_ERRORS[name]
    path = _manifest(tmp_path, change)
    manifest, _ = load_manifest(path)
    with pytest.raises(InvalidInputError, match=match) as exc:
        check_manifest(manifest, path)
    assert exc.value.path == path and exc.value.exit_code == 3


def test_swapped_image_and_label_is_refused_as_not_ct(env: Any, shared: Path, tmp_path: Path) -> None:
    def swap(entries: list[dict[str, Any]]) -> None:
        e = next(e for e in entries if e["case_id"] == "totalseg_example_ct_sm")
        e["image"], e["label"] = e["label"], e["image"]
        e["sha256"]["image"], e["sha256"]["label"] = e["sha256"]["label"], e["sha256"]["image"]
        e["liver_value"] = 1

    path = _manifest(tmp_path, swap)
    manifest, _ = load_manifest(path)
    check_manifest(manifest, path)
    verify_manifest(manifest, shared, path)
    cfg = write_config(tmp_path, manifest=path)
    with pytest.raises(InvalidInputError, match=r"case totalseg_example_ct_sm: image values lie in .*not a CT in HU"):
        run_training(cfg, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".train.lock"], "a refused run leaves no run behind"


# 8. run folder


def test_existing_run_folder_without_resume_is_refused_untouched(base: Path) -> None:
    before = _files(base / "run")
    with pytest.raises(UsageError, match="already holds a run"):
        run_training(base / "cfg.yaml", base / "run")
    assert _files(base / "run") == before


def test_a_run_folder_in_use_is_refused(base: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run/.train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(UsageError, match="another training is running"):
            run_training(base / "cfg.yaml", tmp_path / "run")
    finally:
        os.close(fd)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".train.lock"]


# 9-10. config


def test_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path: Path) -> None:
    text = (REPO / "configs/liver_ci.yaml").read_text() + "optim: {lr: 1.0}\n"
    (tmp_path / "dup.yaml").write_text(text)
    with pytest.raises(InvalidInputError, match=r"duplicate key 'optim' at line \d+ \(first at line \d+\)") as exc:
        load_config(tmp_path / "dup.yaml")
    assert exc.value.path == tmp_path / "dup.yaml"


def test_every_yaml_file_in_the_repository_still_loads() -> None:
    from medseg.yamltext import load_yaml

    files = [p for d in ("configs", "validation", "docs", "medseg") for p in (REPO / d).rglob("*.y*ml")]
    assert len(files) > 20
    for p in files:
        assert load_yaml(p.read_text()) == yaml.safe_load(p.read_text()), p


BAD_VALUES = {
    "optim.grad_clip": {"optim": {"grad_clip": -1}},
    "optim.min_lr_ratio": {"optim": {"min_lr_ratio": 5}},
    "optim.warmup_iterations": {"optim": {"warmup_iterations": -5}},
    "optim.lr": {"optim": {"lr": 0}},
    "spacing": {"spacing": [3.0, 0.0, 3.0]},
    "data.patch_size": {"data": {"patch_size": [32, 0, 32]}},
    "validation.sw_batch_size": {"validation": {"sw_batch_size": 0}},
    "dropout": {"network": {"dropout": 2.0}},
    "organ": {"organ": "spleen"},
    "strides": {"network": {"strides": [2, 2, 2]}},
    "label names": {"labels": {0: "background", 1: "liver", 2: "portal-vein"}, "network": {"out_channels": 3}},
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_out_of_range_config_values_are_refused_at_load(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, **BAD_VALUES[key])
    with pytest.raises(InvalidInputError, match=key.split(".")[-1]) as exc:
        load_config(path)
    assert exc.value.path == path


# 11. card


def test_card_records_code_packages_hardware_and_the_manifest_used(env: Any, tmp_path: Path) -> None:
    shutil.copyfile(MANIFEST, tmp_path / "my_manifest.json")
    cfg = write_config(tmp_path, manifest=tmp_path / "my_manifest.json", name="liver-probe",
                       run={"max_iterations": 2, "val_every": 2})  # fmt: skip
    run_training(cfg, tmp_path / "run")
    card = export_model(tmp_path / "run", tmp_path / "model", {})
    t = card.training
    assert t["manifest"]["file"] == f"sha256:{t['manifest']['sha256']}"  # outside the repository: no file name
    assert t["git_dirty"] in (True, False) and len(t["git_commit"]) == 40
    assert set(t["packages"]) == {"torch", "monai", "numpy"} and t["packages"]["torch"] == torch.__version__
    assert t["hardware"].startswith("CPU") and t["segments"][0]["from_iteration"] == 0
    assert card.limitations != card_text("liver", "liver").limitations
    assert "No limitations have been assessed" in card.limitations[0]


# 5-6. cache


def test_cache_key_holds_labels_json_and_a_changed_cache_file_is_prepared_again(shared: Path, tmp_path: Path) -> None:
    from medseg.train.realdata import cached_real_case
    from medseg.train.synth.prepare import cached_case

    m, _ = load_manifest(MANIFEST)
    lm = next(e for e in m.entries if e.kind == "label_map")
    import hashlib

    names = (shared / lm.labels_json).read_text()
    for name, text in (("a.json", names), ("b.json", names + " \n")):
        (tmp_path / name).write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()  # the same names, another file: another cache key
        cached_case(shared / lm.label, tmp_path / name, (3.0,) * 3, lm.sha256["label"], tmp_path, digest)
    assert len(list((tmp_path / "anatomy").glob("*.npz"))) == 2
    e = next(e for e in m.entries if e.kind == "ct_pair" and e.split == "val")
    args = (e.case_id, shared / e.image, shared / e.label, e.liver_value, (3.0,) * 3, e.sha256, tmp_path)
    umask = os.umask(0o002)  # Ubuntu's default for users with private groups: a 0775 real/ would be group-writable
    try:
        ref = cached_real_case(*args)  # type: ignore[arg-type]
    finally:
        os.umask(umask)
    assert (tmp_path / "real").stat().st_mode & 0o777 == 0o700
    (f,) = (tmp_path / "real").glob("*.npz")
    z = dict(np.load(f))
    z["label"][:] = 0
    np.savez_compressed(f.with_suffix(".x.npz"), **z)
    os.replace(f.with_suffix(".x.npz"), f)
    again = cached_real_case(*args)  # type: ignore[arg-type]
    assert np.array_equal(again.label, ref.label) and again.label.any()


# 12-13. MLflow


def _process_state() -> tuple[Any, ...]:
    """What a run could change for the whole process: torch threads and deterministic mode, the three generators."""
    import random

    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.get_rng_state().numpy().tobytes(), repr(np.random.get_state()), random.getstate())  # fmt: skip


def test_shared_store_keeps_artifacts_out_of_other_runs_and_no_absolute_paths(env: Any, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store/mlflow.db'}"
    (tmp_path / "store").mkdir()
    secret = tmp_path / "Doe_John_MRN123"
    shutil.copyfile(MANIFEST, tmp_path / "m.json")
    secret.mkdir()
    shutil.copyfile(MANIFEST, secret / "manifest Doe_John.json")
    before = _process_state()
    run_training(write_config(tmp_path, manifest=tmp_path / "m.json", run={"max_iterations": 2}), tmp_path / "r1",
                 tracking_uri=uri)  # fmt: skip
    cfg2 = write_config(secret, manifest=secret / "manifest Doe_John.json", run={"max_iterations": 2})
    run_training(cfg2, tmp_path / "r2", tracking_uri=uri)
    # the in-process runs leave no experiment or store behind for the caller's next MLflow run, and the process's
    # torch threads, deterministic mode and random generators as they were
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ
    assert _process_state() == before
    assert not torch.isnan(torch.empty(1024)).all()
    assert not (tmp_path / "r1/mlartifacts").exists()
    db = sqlite3.connect(tmp_path / "store/mlflow.db")
    uris = [u for (u,) in db.execute("select artifact_uri from runs")]
    assert len(uris) == 2 and all(str(tmp_path / "store/mlartifacts") in u for u in uris)
    text = " ".join(str(v) for (v,) in db.execute("select dataset_source from datasets"))
    text += " ".join(str(v) for (v,) in db.execute("select value from params"))
    assert "Doe" not in text and str(tmp_path) not in text
    assert not [p for p in (tmp_path / "store/mlartifacts").rglob("*") if "Doe" in p.name]


# 16. SIGTERM


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_130_and_marks_the_run_killed(env: Any, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, run={"max_iterations": 100000, "val_every": 100000})
    proc = subprocess.Popen([str(BIN / "medseg"), "train", str(cfg), "--out", str(tmp_path / "run")], cwd=tmp_path,
                            env={**env, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if line.startswith("it 10:") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["progress"]["iteration"] >= 10
    db = sqlite3.connect(tmp_path / "run/mlflow.db")
    assert db.execute("select status from runs").fetchall() == [("KILLED",)]
    assert not (tmp_path / "run/summary.json").exists()


@pytest.mark.parametrize("axis", [1, 2])
def test_a_label_mirrored_onto_air_is_refused(shared: Path, tmp_path: Path, axis: int) -> None:
    import nibabel as nib

    from medseg.train.realdata import prepare_real_case

    case = shared / "ct/totalseg_example_ct_sm"
    lab = nib.load(case / "liver.nii.gz")
    nib.save(nib.Nifti1Image(np.flip(np.asarray(lab.dataobj), axis).copy(), lab.affine, lab.header),
             tmp_path / "flipped.nii.gz")  # fmt: skip
    prepare_real_case("ok", case / "image.nii.gz", case / "liver.nii.gz", 1, (3.0, 3.0, 3.0))
    with pytest.raises(InvalidInputError, match=r"of the label lies on air .*flipped or shifted"):
        prepare_real_case("flipped", case / "image.nii.gz", tmp_path / "flipped.nii.gz", 1, (3.0, 3.0, 3.0))
