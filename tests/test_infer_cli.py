"""`medseg infer` and `medseg models list` end to end on the real CTs in shared data."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from infer_fixtures import make_model_folder
from test_infer_seg import assert_seg_matches, dciodvfy_errors

from medseg.cli.main import main
from medseg.io import read_image, read_nifti
from medseg.models.registry import ZOO, sha256_file


@pytest.fixture(scope="module")
def everything_model(tmp_path_factory):
    """A model whose output is 'liver' everywhere (a large positive liver bias): deterministic outputs."""
    return make_model_folder(tmp_path_factory.mktemp("model"), seed=1, roi=(64, 64, 64), foreground_bias=1000.0)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def run(monkeypatch, model_cache, capsys):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(model_cache))

    def invoke(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return invoke


def summary(folder) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_dicom_study_end_to_end(shared, tmp_path, run, everything_model):
    src = shared / "ct/chaos_ct_sample/dicom"
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path)
    assert code == 0, err
    case = tmp_path / "dicom"
    assert sorted(p.name for p in case.iterdir()) == ["liver.nii.gz", "preview.png", "seg.dcm", "summary.json"]
    volume = read_image(src)
    labels = read_nifti(case / "liver.nii.gz")
    assert labels.geometry.same_grid(volume.geometry, tol_mm=1e-4)
    s = summary(case)
    organ = s["organs"][0]
    mask = labels.array == 1
    assert organ["voxel_count"] == int(mask.sum()) > 0
    assert organ["volume_ml"] == pytest.approx(mask.sum() * volume.geometry.voxel_volume_ml)
    assert organ["mean_hu"] == pytest.approx(float(volume.array[mask].mean()), rel=1e-6)
    assert organ["std_hu"] == pytest.approx(float(volume.array[mask].std()), rel=1e-6)
    assert s["model"]["sha256"] == sha256_file(everything_model / "weights.pt")
    assert {f["code"] for f in s["qc"]["flags"]} >= {"volume_implausible", "organ_truncated"}
    assert "QC flag volume_implausible" in err and s["status"] == "flagged"
    assert set(s["timings_s"]) >= {"load", "load_model", "preprocess", "inference", "postprocess", "write_seg", "total"}
    assert s["input"]["sha256"] and s["software"]["medseg"]
    assert dciodvfy_errors(case / "seg.dcm") == []
    assert_seg_matches(case / "seg.dcm", volume, labels.array)
    from PIL import Image

    with Image.open(case / "preview.png") as im:
        assert im.width > 2 * im.height / 1.5 and im.mode == "RGB"


def test_series_without_uids_is_segmented_without_seg(shared, tmp_path, run, everything_model):
    src = shared / "dicom/ct_series_totalsegmentator"
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path)
    assert code == 0, err
    case = tmp_path / src.name
    assert read_nifti(case / "liver.nii.gz").geometry.same_grid(read_image(src).geometry, tol_mm=1e-4)
    assert not (case / "seg.dcm").exists() and "no seg.dcm: source series has empty" in err
    s = summary(case)
    assert "Instance UIDs" in s["seg_not_written"] and s["outputs"]["seg"] is None


def test_nifti_input_and_no_overwrite(shared, tmp_path, run, everything_model):
    src = shared / "ct/totalseg_example_ct_sm/image.nii.gz"
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path)
    assert code == 0, err
    case = tmp_path / "image"
    assert not (case / "seg.dcm").exists()
    assert read_nifti(case / "liver.nii.gz").geometry.same_grid(read_image(src).geometry, tol_mm=1e-4)
    before = (case / "liver.nii.gz").read_bytes()
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (case / "liver.nii.gz").read_bytes() == before
    code, _, _ = run("infer", src, "--model", everything_model, "--out", tmp_path, "--overwrite", "--fast")
    assert code == 0 and summary(case)["settings"]["overlap"] == 0.0


def _audit_end_events() -> list[dict]:
    from medseg.audit.config import load_config
    from medseg.audit.store import AuditStore

    with AuditStore.open(load_config()) as store:
        return [r.body for r in store.records() if r.body["kind"] == "end"]


def test_brain_mr_is_refused_by_default_and_forced_on_record(shared, tmp_path, run, everything_model):
    import pydicom

    src = shared / "dicom/mr_series_penn_prisma_phantom"
    for extra in ((), ("--strict",)):
        out = tmp_path / f"refused{len(extra)}"
        code, _, err = run("infer", src, "--model", everything_model, "--out", out, *extra)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 5 and len(lines) == 1 and str(src) in lines[0] and "--force" in lines[0]
        s = summary(out / src.name)
        assert s["status"] == "qc_rejected" and set(s["qc"]["refused"]) == {"modality", "body_part", "not_hu"}
        assert sorted(p.name for p in (out / src.name).iterdir()) == ["summary.json"]
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "forced", "--force")
    assert code == 0 and "QC flag modality: modality is MR" in err and "--force" in err
    case = tmp_path / "forced" / src.name
    s = summary(case)
    assert s["settings"]["force"] is True and set(s["qc"]["forced"]) == {"modality", "body_part", "not_hu"}
    assert s["status"] == "flagged" and s["qc"]["refused"] == []
    assert pydicom.dcmread(case / "seg.dcm").SeriesDescription.startswith("FORCED modality,not_hu,body_part")
    ends = _audit_end_events()
    assert [e["exit_code"] for e in ends] == [5, 5, 0]
    assert ends[-1]["params"]["force"] is True and ends[-1]["outcome_detail"].startswith("forced:")
    assert "forced:" not in (ends[0]["outcome_detail"] or "") and ends[0]["outcome"] == "qc_rejected"
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "fs", "--force", "--strict")
    assert code == 5 and "slice_spacing" in err and "modality (" not in err


def test_windowed_8bit_image_is_flagged(shared, tmp_path, run, everything_model):
    ct = read_image(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    from medseg.io import write_nifti

    display = np.clip((ct.array.astype(np.float32) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    write_nifti(ct.with_array(display), tmp_path / "windowed.nii.gz")
    code, _, err = run("infer", tmp_path / "windowed.nii.gz", "--model", everything_model, "--out", tmp_path / "o")
    assert code == 5 and "QC flag not_hu" in err and "input refused" in err
    assert summary(tmp_path / "o" / "windowed")["qc"]["refused"] == ["not_hu"]
    code, _, _ = run("infer", tmp_path / "windowed.nii.gz", "--model", everything_model, "--out", tmp_path / "f",
                     "--force")  # fmt: skip
    assert code == 0 and "not_hu" in {f["code"] for f in summary(tmp_path / "f" / "windowed")["qc"]["flags"]}


def test_missing_slice_and_gantry_tilt_are_refused(shared, tmp_path, run, everything_model):
    files = sorted((shared / "ct/chaos_ct_sample/dicom").iterdir())
    gap = tmp_path / "gap"
    gap.mkdir()
    for f in files[:30]:
        if f != files[15]:
            shutil.copy(f, gap / f.name)
    code, _, err = run("infer", gap, "--model", everything_model, "--out", tmp_path / "o")
    assert code == 3 and "missing slice" in err
    code, _, err = run(
        "infer",
        shared / "dicom/dicom2nifti/failing/gantrytilting",
        "--model",
        everything_model,
        "--out",
        tmp_path / "t",
    )
    assert code == 3 and "tilt" in err.lower()
    assert not any((tmp_path / "t").rglob("*.nii.gz"))


def test_folder_of_cases_continues_after_a_failure(shared, tmp_path, run, everything_model):
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(shared / "ct/totalseg_example_ct_sm/image.nii.gz", batch / "good.nii.gz")
    (batch / "broken.nii.gz").write_bytes(b"\x00not a nifti file" * 100)
    code, out, err = run("--log-json", "infer", batch, "--model", everything_model, "--out", tmp_path / "o")
    assert code in (3, 4) and "broken" in err
    assert (tmp_path / "o" / "good" / "liver.nii.gz").is_file()
    assert "1 failed of 2" in out
    events = [json.loads(line) for line in err.splitlines() if '"case_done"' in line]
    assert {e["case"]: e["status"] for e in events} == {"broken": "failed", "good": "flagged"}


def test_models_list(run):
    code, out, _ = run("models", "list", "--json")
    cards = json.loads(out)
    installed = sorted(p.name for p in ZOO.glob("*") if (p / "model_card.yaml").is_file())
    assert code == 0 and sorted(c["folder"].rsplit("/", 1)[-1] for c in cards) == installed


def test_models_list_shows_cards_and_verifies_weights(run, tmp_path, monkeypatch):
    from medseg.models import registry

    make_model_folder(tmp_path / "good", seed=5, roi=(64, 64, 64))
    make_model_folder(tmp_path / "bad", seed=6, roi=(64, 64, 64))
    with (tmp_path / "bad" / "weights.pt").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"oops")
    monkeypatch.setattr(registry, "ZOO", tmp_path)
    cards = {name: registry.sha256_file(tmp_path / name / "model_card.yaml") for name in ("good", "bad")}
    monkeypatch.setattr(registry, "builtin_card_digests", lambda: cards)  # as card_digests.json records the zoo's
    code, out, _ = run("models", "list")
    assert code == 0 and "test-liver-5 0.0.1  organ=liver" in out and "intended use: tests only" in out
    assert "  --model good  labels:" in out, "the name to pass to --model is the folder's"
    code, out, err = run("models", "list", "--verify")
    assert code == 4 and "[verified]" in out and "[MISMATCH" in out and "for bad" in err
    code, out, _ = run("models", "list", "--json", "--verify")
    assert {c["name"]: c["weights_verified"] for c in json.loads(out)} == {"test-liver-5": True, "test-liver-6": False}


def test_models_prepare_exports_once(run, everything_model):
    code, out, _ = run("models", "prepare", everything_model)
    assert code == 0 and "openvino" in out and "agreement" in out
    code, out, _ = run("models", "prepare", everything_model)
    assert code == 0 and "already cached" in out


def test_subprocess_wall_time_and_peak_rss(shared, tmp_path, model_cache, everything_model):
    """The command as users run it, measured: peak RSS stays far below the 4 GB goal."""
    env = dict(os.environ, MEDSEG_CACHE_DIR=str(model_cache))
    medseg = os.path.join(os.path.dirname(sys.executable), "medseg")
    args = [medseg, "--quiet", "infer", str(shared / "ct/chaos_ct_sample/dicom"), "--model", str(everything_model)]
    t = time.perf_counter()
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([*args, "--out", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this command's own peak (and its children's), no other test's
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t
    peak_mb = usage.ru_maxrss / 1024
    assert proc.returncode == 0, stderr
    assert peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"
    print(f"chaos 512x512x78 DICOM -> SEG: {wall:.1f} s wall, peak RSS {peak_mb:.0f} MB")


def test_disk_full_leaves_no_partial_result_set(shared, tmp_path, model_cache, everything_model):
    """A write failing mid-case (file-size limit, like a full disk) exits 4 and leaves no outputs or temp files, only
    the small summary.json that records the failure for monitoring."""
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    env = dict(os.environ, MEDSEG_CACHE_DIR=str(model_cache))
    medseg = os.path.join(os.path.dirname(sys.executable), "medseg")
    src = shared / "ct/chaos_ct_sample/dicom"
    args = [medseg, "infer", str(src), "--model", str(everything_model), "--out", str(tmp_path / "o")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 4, proc.stderr
    assert "cannot write output" in proc.stderr
    left = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*") if p.is_file())
    assert left == ["dicom/summary.json"], left  # only the record that the case failed, no partial result set
    assert json.loads((tmp_path / "o/dicom/summary.json").read_text())["status"] == "failed"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has a CUDA GPU: the refusal cannot happen")
def test_device_cuda_without_a_gpu_is_refused_before_the_input_is_read(shared, tmp_path, run):
    """A reviewer saw the input read and QC warnings printed before the exit-4 refusal."""
    code, _, err = run("infer", shared / "ct/chaos_ct_sample/dicom", "--device", "cuda", "--out", tmp_path / "o")
    assert code == 4, err
    assert err.strip().splitlines() == ["error: --device cuda requested but no CUDA device is available. Use --device "
                                        "cpu."], err  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("option", "hint"), [(("--backend", "torch"), "Use --backend openvino or auto"),
                                              (("--device", "cuda"), "Use --device cpu")])  # fmt: skip
def test_int8_on_another_runtime_names_the_option_to_change(shared, tmp_path, run, option, hint):
    code, _, err = run("infer", shared / "ct/chaos_ct_sample/dicom", "--precision", "int8", *option,
                       "--out", tmp_path / "o")  # fmt: skip
    assert code == 2, err
    assert err.strip().splitlines() == [f"error: --precision int8 runs on OpenVINO on the CPU only. {hint}."]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--organ", "kidney"), "no default model for organ 'kidney': no installed model validates it. Organs served by "
                            "default: liver, spleen"),
    (("--model", "abdomen-9.9"), "model 'abdomen-9.9' not found. --model takes abdomen, abdomen-2.1, abdomen-2.2, "
                                 "liver, or a model folder"),
])  # fmt: skip
def test_an_option_naming_no_model_is_a_usage_error_listing_what_it_takes(shared, tmp_path, run, args, message):
    """README: exit 2 for an unvalidated organ or a bad option; a reviewer got 3, and card names --model refuses."""
    code, _, err = run("infer", shared / "ct/totalseg_example_ct_sm/image.nii.gz", *args, "--out", tmp_path / "o")
    assert code == 2 and err.strip().splitlines() == [f"error: {message}."], err


def test_the_readers_notes_are_printed_as_warnings_not_only_written(shared, tmp_path, run, everything_model):
    """README: non-fatal findings are printed as warnings; a reviewer found them only in summary.json."""
    import nibabel as nib

    img = nib.load(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    shifted = img.affine.copy()
    shifted[:3, 3] += 5.0
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    out.set_qform(shifted, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, tmp_path / "ct.nii.gz")
    code, _, err = run("infer", tmp_path / "ct.nii.gz", "--model", everything_model, "--out", tmp_path / "o")
    assert code == 0, err
    notes = json.loads((tmp_path / "o/ct/summary.json").read_text())["notes"]
    assert any("qform and sform disagree" in n for n in notes), notes
    assert all(f"warning: ct: {n}" in err.splitlines() for n in notes), err


def test_an_existing_output_of_any_case_stops_a_folder_run_before_any_work(shared, tmp_path, run, everything_model):
    """README: exit 2 before any work; a reviewer saw case aa segmented and written before case zz's clash."""
    (tmp_path / "in").mkdir()
    for name in ("aa", "zz"):
        (tmp_path / "in" / f"{name}.nii.gz").symlink_to(shared / "ct/totalseg_example_ct_sm/image.nii.gz")
    (tmp_path / "out" / "zz").mkdir(parents=True)
    (tmp_path / "out" / "zz" / "summary.json").write_text("{}")
    code, _, err = run("infer", tmp_path / "in", "--model", everything_model, "--out", tmp_path / "out")
    assert code == 2 and "output already exists" in err.strip().splitlines()[-1], err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["zz"]
    assert "segmenting" not in err


def test_a_failed_cases_record_is_replaced_by_the_rerun_without_overwrite(shared, tmp_path, run, everything_model):
    """The failure's summary.json (kept for monitoring) is no result: fixing the input and running the same command
    again must not demand --overwrite."""
    src = tmp_path / "ct.nii.gz"
    good = (shared / "ct/totalseg_example_ct_sm/image.nii.gz").read_bytes()
    src.write_bytes(good[: len(good) // 2])
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "o")
    assert code == 3, err
    assert json.loads((tmp_path / "o/ct/summary.json").read_text())["status"] == "failed"
    src.write_bytes(good)
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "o")
    assert code == 0, err
    assert json.loads((tmp_path / "o/ct/summary.json").read_text())["status"] in ("ok", "flagged")
    assert (tmp_path / "o/ct/liver.nii.gz").is_file()
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "o")
    assert code == 2 and "output already exists" in err  # a result is never replaced without --overwrite


def _copy_study(shared, dst, ks=range(30, 50)):
    dst.mkdir(parents=True)
    for f in sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[ks.start : ks.stop]:
        shutil.copy(f, dst / f.name)
    return dst


def test_an_out_whose_case_folder_is_the_input_folder_is_refused(shared, tmp_path, run, everything_model):
    """`medseg infer data/study --out data`: the case folder is the study itself; a reviewer saw the outputs written
    among the slices and, with --overwrite, a manual liver.nii.gz there replaced by the model's."""
    study = _copy_study(shared, tmp_path / "data" / "study")
    (study / "liver.nii.gz").write_bytes((shared / "ct/chaos_ct_sample/liver.nii.gz").read_bytes())
    before = sorted((p.name, p.stat().st_size) for p in study.iterdir())
    for extra in ((), ("--overwrite",)):
        code, _, err = run("infer", study, "--model", everything_model, "--out", tmp_path / "data", *extra)
        assert code == 2 and "would be its input folder" in err, err
    assert sorted((p.name, p.stat().st_size) for p in study.iterdir()) == before


def test_a_symlinked_case_folder_is_refused_not_swapped(shared, tmp_path, run, everything_model):
    study = _copy_study(shared, tmp_path / "in" / "dicom")
    elsewhere = tmp_path / "viewer"
    (elsewhere / "state").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dicom").symlink_to(elsewhere)
    code, _, err = run("infer", study, "--model", everything_model, "--out", tmp_path / "out")
    assert code == 2 and "symbolic link" in err, err
    assert (tmp_path / "out" / "dicom").is_symlink() and (elsewhere / "state").is_dir()


def test_each_failure_replaces_the_record_of_the_last_and_an_empty_case_folder_gets_one(shared, tmp_path, run,
                                                                                      everything_model):  # fmt: skip
    """A re-probe saw the first failure's record kept through later, different failures, and none written into a
    case folder a pickup script had made empty."""
    src = tmp_path / "ct.nii.gz"
    good = (shared / "ct/totalseg_example_ct_sm/image.nii.gz").read_bytes()
    src.write_bytes(good[: len(good) // 2])
    (tmp_path / "o" / "ct").mkdir(parents=True)
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "o")
    assert code == 3 and "truncated" in json.loads((tmp_path / "o/ct/summary.json").read_text())["failure"], err
    src.write_text("not gzip")
    code, _, err = run("infer", src, "--model", everything_model, "--out", tmp_path / "o")
    record = json.loads((tmp_path / "o/ct/summary.json").read_text())
    assert code == 3 and record["status"] == "failed" and "not a gzip file" in record["failure"], err


def test_a_series_not_read_is_a_warning_shown_under_quiet(shared, tmp_path, run, everything_model):
    """A two-patient series beside a good study was an info line, gone under --quiet (exit 0, nothing said)."""
    import pydicom

    _copy_study(shared, tmp_path / "in" / "good")
    (tmp_path / "in" / "mixed").mkdir()
    for n, f in enumerate(sorted((shared / "ct/chaos_ct_sample/dicom").glob("*.dcm"))[30:50]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5.6.7"
        ds.PatientID = "A" if n < 10 else "B"
        ds.save_as(tmp_path / "in" / "mixed" / f.name)
    code, _, err = run("--quiet", "infer", tmp_path / "in", "--model", everything_model, "--out", tmp_path / "o")
    assert code == 0, err
    assert any(line.startswith("warning: not segmented: 1.2.3.4.5.6.7") and "2 different PatientID" in line
               for line in err.splitlines()), err  # fmt: skip
