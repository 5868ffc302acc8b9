"""One real `medseg validate` of the shipped liver model on its locked set (run once per session), then the report,
its signature and every tamper case: a changed metric, a replaced artifact, another key, a moved signature."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_run import run_cli

from medseg.cli.main import main
from medseg.keys import keypair_paths, write_keypair
from medseg.metrics import image_diagonal_mm
from medseg.models.registry import resolve_model
from medseg.validation.sets import SETS_DIR, load_set

pytestmark = pytest.mark.slow
SET = "liver_real_manual_v1"


@pytest.fixture(scope="session")
def validated(shared, tmp_path_factory) -> Path:
    """A real validation folder (3 real CTs through the infer pipeline), made once; tests copy it before changing it."""
    base = tmp_path_factory.mktemp("validation")
    out = base / "run"
    junit = base / "junit.xml"  # a real (small) test run of this checkout, for the traceability matrix
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "tests/test_metrics.py::test_normals_table_is_the_reference_table",
                    "tests/test_validation_trace.py::test_the_project_risk_records_are_consistent"],
                   cwd=Path(__file__).parents[1], capture_output=True, timeout=300, check=True)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_CACHE_DIR", str(base / "cache"))
        mp.setenv("MEDSEG_AUDIT_DIR", str(base / "audit"))  # this run's own trail, kept for the audit test
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(SystemExit) as exc:
            main(["validate", "--model", "liver", "--set", SET, "--out", str(out), "--junit", str(junit)])
    report = json.loads((out / "report.json").read_text())
    assert exc.value.code == (
        0 if report["acceptance"]["verdict"] == "pass" and report["traceability"]["complete"] else 1
    )
    return out


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("qa", "other"):
        write_keypair(*keypair_paths(folder, name))
    return keypair_paths(folder, "qa")[0], keypair_paths(folder, "qa")[1], keypair_paths(folder, "other")[1]


def with_trail(validated: Path) -> None:
    """This test's audit trail starts as a copy of the validation's."""
    shutil.copytree(validated.parent / "audit", Path(os.environ["MEDSEG_AUDIT_DIR"]), dirs_exist_ok=True)


def signed_copy(validated: Path, folder: Path, key: Path, capsys, *extra: str) -> Path:
    """A copy of the validation folder, signed by "Ada Reviewer" as reviewed (with the validation's audit trail, which
    `report sign` checks: it signs only a report.json a recorded `medseg validate` wrote; this record does not
    support release, so it cannot be signed as approved)."""
    shutil.copytree(validated, folder)
    with_trail(validated)
    code, out = run_cli(["report", "sign", str(folder), "--key", str(key), "--signer", "Ada Reviewer",
                         "--meaning", "reviewed", *extra], capsys)  # fmt: skip
    assert code == 0, out
    return folder


@pytest.fixture
def signed(validated, keys, tmp_path, capsys) -> Path:
    return signed_copy(validated, tmp_path / "signed", keys[0], capsys)


@pytest.mark.req("REQ-012", "REQ-013", "REQ-014")
def test_report_holds_every_case_with_finite_metrics_and_the_card_figure(validated, shared) -> None:
    r = json.loads((validated / "report.json").read_text())
    assert [c["case_id"] for c in r["cases"]] == ["chaos_ct_set3", "radcttace_1211", "radcttace_0697"]
    for c in r["cases"]:
        m = c["metrics"]["liver"]
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), c["case_id"]
        assert 0.0 <= m["dice"] <= 1.0 and m["hd95_mm"] >= 0 and m["nsd_tolerance_mm"] == 3.0
    chaos = r["cases"][0]["metrics"]["liver"]
    card_dice = resolve_model("liver").card.metrics["locked_test_real_ct"]["cases"][0]["dice"]
    assert chaos["dice"] == pytest.approx(card_dice, abs=0.02)  # the card's figure, reproduced through medseg infer
    assert chaos["volume_ref_ml"] == pytest.approx(1417.5, abs=0.5)
    dice = r["aggregates"]["dice"]
    assert dice["n"] == 3 and dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert dice["mean"] == pytest.approx(np.mean([c["metrics"]["liver"]["dice"] for c in r["cases"]]))
    assert r["independence"]["independent"] and r["set"]["set_digest"] == json.loads(
        (SETS_DIR / f"{SET}.lock.json").read_text())["set_digest"]  # fmt: skip
    assert r["bootstrap"]["resampling_unit"] == "patient"


@pytest.mark.req("REQ-015")
def test_subgroups_have_n_and_ci_and_small_ones_are_flagged(validated) -> None:
    r = json.loads((validated / "report.json").read_text())
    factors = {g["factor"] for g in r["subgroups"]}
    assert factors == {"manufacturer", "slice_thickness_band", "phase", "site"}
    for g in r["subgroups"]:
        assert g["interpretable"] == (g["n_patients"] >= 3) and g["ci_low"] <= g["mean"] <= g["ci_high"]
    manufacturers = {g["value"] for g in r["subgroups"] if g["factor"] == "manufacturer"}
    assert {"GE", "Philips"} <= manufacturers


@pytest.mark.req("REQ-016")
def test_acceptance_is_judged_with_evidence_and_the_criteria_digest(validated) -> None:
    from medseg.audit.digest import file_sha256
    from medseg.validation.acceptance import ACCEPTANCE_DIR

    r = json.loads((validated / "report.json").read_text())
    assert r["acceptance_file"]["sha256"] == file_sha256(ACCEPTANCE_DIR / "liver_v1.yaml")
    by_id = {c["id"]: c for c in r["acceptance"]["criteria"]}
    mean_dice = r["aggregates"]["dice"]["mean"]
    assert by_id["AC-01"]["verdict"] == ("pass" if mean_dice >= 0.90 else "fail")
    assert by_id["AC-01"]["evidence"]["value"] == mean_dice
    assert by_id["AC-07"]["verdict"] == "not_evaluable"  # every subgroup has fewer than 3 patients
    verdicts = {c["verdict"] for c in by_id.values()}
    expected = "pass" if verdicts == {"pass"} else ("fail" if "fail" in verdicts else "inconclusive")
    assert r["acceptance"]["verdict"] == expected


@pytest.mark.req("REQ-013")
def test_a_failed_inference_scores_as_a_miss_not_a_gap(shared) -> None:
    from medseg.metrics import aggregate
    from medseg.validation.run import score_case

    case = load_set(SETS_DIR / f"{SET}.yaml").cases[2]
    m = score_case(case, shared, None, "liver", 1, 3.0)["liver"]
    assert m["outcome"] == "miss" and m["dice"] == 0.0 and m["nsd"] == 0.0
    assert m["hd95_mm"] == pytest.approx(image_diagonal_mm((512, 512, 44), (0.8047, 0.8047, 5.0)), rel=1e-3)
    assert aggregate([0.92, 0.9, m["dice"]], ["a", "b", "c"], seed=1).mean == pytest.approx(0.6067, abs=1e-3)


@pytest.mark.req("REQ-017")
def test_artifacts_and_html(validated) -> None:
    from medseg.validation.report import artifacts

    r = json.loads((validated / "report.json").read_text())
    assert r["artifacts"] == artifacts(validated)
    assert {"per_case.csv", "cases/chaos_ct_set3/preview.png", "cases/radcttace_0697/liver.nii.gz"} <= set(
        r["artifacts"]
    )
    html = (validated / "report.html").read_text()
    assert "NOT SIGNED" in html and "<svg" in html and "AC-01" in html
    worst = min(r["cases"], key=lambda c: c["metrics"]["liver"]["dice"])["case_id"]
    previews = [line for line in html.splitlines() if "preview.png" in line]
    assert worst in previews[0]


@pytest.mark.req("REQ-018")
def test_signed_report_verifies_and_shows_the_signature(validated, keys, tmp_path, capsys) -> None:
    signed = signed_copy(validated, tmp_path / "signed", keys[0], capsys, "--pdf")
    code, out = run_cli(["report", "verify", str(signed), "--public-key", str(keys[1])], capsys)
    assert code == 0 and "report intact: reviewed by Ada Reviewer" in out
    html = (signed / "report.html").read_text()
    assert "Ada Reviewer" in html and "reviewed" in html and "NOT SIGNED" not in html
    assert (signed / "report.pdf").read_bytes()[:5] == b"%PDF-"  # printed by Chromium from the signed HTML
    statement = json.loads(base64.b64decode(json.loads((signed / "signature.dsse.json").read_text())["payload"]))
    assert "report.pdf" in {s["name"] for s in statement["subject"]}
    code, out = run_cli(["report", "sign", str(signed), "--key", str(keys[0]), "--signer", "X", "--meaning",
                         "reviewed"], capsys)  # fmt: skip
    assert code == 2 and "already signed" in out


@pytest.mark.req("REQ-018")
def test_an_edited_metric_fails_verification(signed, keys, capsys) -> None:
    path = signed / "report.json"
    path.write_text(path.read_text().replace('"dice": 0.', '"dice": 0.9', 1))
    code, out = run_cli(["report", "verify", str(signed), "--public-key", str(keys[1])], capsys)
    assert code == 1 and "report.json: changed after signing" in out


@pytest.mark.req("REQ-018")
def test_a_replaced_artifact_fails_verification(signed, keys, capsys) -> None:
    (signed / "cases/radcttace_1211/liver.nii.gz").write_bytes(
        (signed / "cases/chaos_ct_set3/liver.nii.gz").read_bytes()
    )
    (signed / "extra.txt").write_text("added later")
    code, out = run_cli(["report", "verify", str(signed), "--public-key", str(keys[1])], capsys)
    assert code == 1
    assert "cases/radcttace_1211/liver.nii.gz: changed after signing" in out
    assert "differs from the digest report.json lists" in out and "extra.txt: not covered" in out


@pytest.mark.req("REQ-018")
def test_another_key_or_a_moved_signature_fails(signed, validated, keys, tmp_path, capsys) -> None:
    code, out = run_cli(["report", "verify", str(signed), "--public-key", str(keys[2])], capsys)
    assert code == 1 and "signature does not verify" in out
    other = tmp_path / "other_report"
    shutil.copytree(validated, other)
    report = json.loads((other / "report.json").read_text())
    report["acceptance"]["verdict"] = "pass"  # another record: the signature block is copied onto it
    (other / "report.json").write_text(json.dumps(report, sort_keys=True, indent=1) + "\n")
    shutil.copy(signed / "signature.dsse.json", other / "signature.dsse.json")
    code, out = run_cli(["report", "verify", str(other), "--public-key", str(keys[1])], capsys)
    assert code == 1 and "report.json: changed after signing" in out and "report.html: changed after signing" in out


@pytest.mark.req("REQ-019")
def test_the_audit_trail_records_the_validation_and_the_signature(signed, validated, capsys) -> None:
    code, out = run_cli(["audit", "show", "--json", "--audit-dir", str(validated.parent / "audit")], capsys)
    assert code == 0, out
    runs = [r for r in json.loads(out) if r["command"] == "validate"]
    report = json.loads((validated / "report.json").read_text())
    code = 0 if report["release"]["supported"] else 1  # the exit the process gave is the one on record
    assert len(runs) == 1 and (runs[0]["exit_code"], runs[0]["outcome"]) == (code, "failure" if code else "success")
    assert (
        "verdict:" in json.dumps(runs[0])
        and runs[0]["model"]["sha256"] == resolve_model("liver").card.weights.sha256
    )
    code, out = run_cli(["audit", "show", "--json"], capsys)
    signs = [r for r in json.loads(out) if r["command"] == "report sign"]
    assert len(signs) == 1 and "reviewed" in json.dumps(signs[0]) and signs[0]["outcome"] == "success"


@pytest.mark.req("REQ-021")
def test_traceability_risk_and_soup_are_in_the_record(validated) -> None:
    r = json.loads((validated / "report.json").read_text())
    rows = {q["id"]: q for q in r["traceability"]["requirements"]}
    assert rows["REQ-020"]["status"] == "pass" and rows["REQ-021"]["status"] == "pass"
    assert rows["REQ-014"]["status"] == ("pass" if r["acceptance"]["verdict"] == "pass" else "fail")
    assert rows["REQ-024"]["status"] == "not_run" and not r["traceability"]["complete"]  # its PACS tests are not in it
    assert r["traceability"]["junit"]["tests"] == 2
    assert {"soup.json", "sbom.cdx.json", "risk.json", "traceability.json"} <= set(r["artifacts"])
    assert r["soup"]["packages"] == len(json.loads((validated / "soup.json").read_text()))
    assert "HAZ-003" in r["risk"]["residual_not_acceptable"] and "HAZ-010" not in r["risk"]["residual_not_acceptable"]
    assert "REQ-024" in (validated / "report.html").read_text()


@pytest.mark.req("REQ-019")
def test_the_validation_is_one_searchable_mlflow_run_with_the_report_files(validated) -> None:
    from mlflow.tracking import MlflowClient

    r = json.loads((validated / "report.json").read_text())
    assert r["mlflow"]["tracking_uri"] == f"sqlite:///{validated.parent / 'mlflow.db'}"
    client = MlflowClient(r["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("medseg-validation")
    runs = client.search_runs([exp.experiment_id], f"tags.model = 'liver' and tags.set = '{SET}'")
    assert [run.info.run_id for run in runs] == [r["mlflow"]["run_id"]]
    run = runs[0]
    assert (
        run.data.tags["set_digest"] == r["set"]["set_digest"] and run.data.tags["verdict"] == r["acceptance"]["verdict"]
    )
    assert run.data.metrics["dice.mean"] == pytest.approx(r["aggregates"]["dice"]["mean"])
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == [SET]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert {"validation/report.json", "validation/per_case.csv", "validation/report.html"} <= files
    local = Path(client.download_artifacts(run.info.run_id, "validation/report.json", str(validated.parent / "dl")))
    assert local.read_bytes() == (validated / "report.json").read_bytes()


@pytest.mark.req("REQ-012", "REQ-013")
def test_the_default_multi_organ_model_is_validated_on_its_own_set_for_its_organ_only(shared, tmp_path) -> None:
    """Abdomen 2.0.0 on liver_real_manual_v2: the liver alone is served and scored (a multi-organ model once
    wrote labels.nii.gz with every class here, and the liver was scored as a miss)."""
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite name="t" tests="0"></testsuite>')
    out = tmp_path / "v2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
        mp.setenv("MEDSEG_AUDIT_DIR", str(tmp_path / "audit"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(SystemExit):
            main(["validate", "--set", "liver_real_manual_v2", "--out", str(out), "--junit", str(junit)])
    report = json.loads((out / "report.json").read_text())
    card = resolve_model(None, "liver").card
    assert (report["model"]["name"], report["model"]["version"]) == (card.name, card.version)
    [case] = report["cases"]
    folder = out / "cases" / "radcttace_0697"
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == ["liver.nii.gz"]
    summary = json.loads((folder / "summary.json").read_text())
    assert [o["name"] for o in summary["organs"]] == ["liver"]
    card_dice = card.metrics["locked_test_real_ct"]["cases"][0]["dice"]
    assert case["metrics"]["liver"]["dice"] == pytest.approx(card_dice, abs=0.02)
    assert "low_confidence" in case["inference"]["qc_flags"]  # its Dice is under 0.90: the flag must say so


@pytest.mark.req("REQ-018")
def test_a_report_edited_before_signing_is_refused_and_nothing_is_written(validated, keys, tmp_path, capsys) -> None:
    """report.json's verdicts turned to 'pass' and then signed once verified as intact: sign now checks that
    report.json is an output recorded for a `medseg validate` run, and that every artifact is as it lists."""
    folder = tmp_path / "edited"
    shutil.copytree(validated, folder)
    with_trail(validated)
    report = json.loads((folder / "report.json").read_text())
    report["acceptance"]["verdict"] = "pass"
    (folder / "report.json").write_text(json.dumps(report, sort_keys=True, indent=1) + "\n")
    html = (folder / "report.html").read_bytes()
    args = ["--key", str(keys[0]), "--signer", "Ada Reviewer", "--meaning", "approved"]
    code, out = run_cli(["report", "sign", str(folder), *args], capsys)
    assert code == 1 and "not an output of any `medseg validate` run" in out, out
    assert not (folder / "signature.dsse.json").exists() and (folder / "report.html").read_bytes() == html
    fresh = tmp_path / "artifact"
    shutil.copytree(validated, fresh)
    (fresh / "cases/chaos_ct_set3/preview.png").write_bytes(b"another picture")
    code, out = run_cli(["report", "sign", str(fresh), *args], capsys)
    assert code == 1 and "cases/chaos_ct_set3/preview.png" in out and not (fresh / "signature.dsse.json").exists()
    code, out = run_cli(["report", "sign", str(tmp_path), *args], capsys)
    assert code == 2 and "no report.json here" in out


@pytest.mark.req("REQ-018")
def test_a_refused_second_signature_leaves_the_signed_record_intact(signed, keys, capsys) -> None:
    """A second `report sign` was refused ('already signed') after it had rewritten report.html with its own
    signer's name, which broke the first, valid signature."""
    html = (signed / "report.html").read_bytes()
    code, out = run_cli(["report", "sign", str(signed), "--key", str(keys[0]), "--signer", "M. Allory",
                         "--meaning", "reviewed"], capsys)  # fmt: skip
    assert code == 2 and "already signed" in out
    assert (signed / "report.html").read_bytes() == html
    code, out = run_cli(["report", "verify", str(signed), "--public-key", str(keys[1])], capsys)
    assert code == 0 and "report intact" in out


@pytest.mark.req("REQ-018")
def test_a_real_record_that_does_not_support_release_is_not_signed_as_approved(
    validated, keys, tmp_path, capsys
) -> None:
    """`report sign --meaning approved` signed this record (validate exit 1, release not supported) and verify then
    said 'report intact: approved ...'. Now exit 1 naming the first reason, and nothing is written."""
    folder = tmp_path / "failed"
    shutil.copytree(validated, folder)
    with_trail(validated)
    reasons = json.loads((folder / "report.json").read_text())["release"]["reasons"]
    html = (folder / "report.html").read_bytes()
    code, out = run_cli(["report", "sign", str(folder), "--key", str(keys[0]), "--signer", "Ada Reviewer",
                         "--meaning", "approved"], capsys)  # fmt: skip
    assert code == 1 and "does not support release" in out and reasons[0] in out, out
    assert not (folder / "signature.dsse.json").exists() and (folder / "report.html").read_bytes() == html


@pytest.mark.req("REQ-012", "REQ-021")
def test_the_report_states_why_release_is_not_supported(validated) -> None:
    """Open hazards (residual risk not acceptable) and failed acceptance criteria are named in the signed record."""
    release = json.loads((validated / "report.json").read_text())["release"]
    hazards = yaml.safe_load((Path(__file__).parents[1] / "docs/risk/hazards.yaml").read_text())["hazards"]
    open_risks = [h["id"] for h in hazards if not h["residual_acceptable"]]
    assert open_risks and not release["supported"]
    assert any(all(h in r for h in open_risks) for r in release["reasons"]), release["reasons"]
    assert "Release NOT supported" in (validated / "report.html").read_text()


@pytest.mark.req("REQ-006")
def test_validation_never_runs_a_cached_export(shared, tmp_path) -> None:
    """An OpenVINO export in the cache altered (weights zeroed) with its record's digests rewritten was run by
    validate and credited to the card's weights (Dice 0.000): validation now exports and checks parity itself."""
    from medseg.infer.runtime import accelerated_runner

    cache = tmp_path / "cache"
    model = resolve_model(None, "liver")
    warm = accelerated_runner(model, "openvino", 1, cache)
    folder = Path(warm.info["cache"])
    weights = folder / "model.bin"
    data = bytearray(weights.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)
    weights.write_bytes(bytes(data))
    record = json.loads((folder / "record.json").read_text())
    record["files"]["model.bin"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "record.json").write_text(json.dumps(record))
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite name="t" tests="0"></testsuite>')
    out = tmp_path / "v2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_CACHE_DIR", str(cache))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(SystemExit):
            main(["validate", "--set", "liver_real_manual_v2", "--out", str(out), "--junit", str(junit)])
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["runtime"]["exported_now"] == "True"
    assert not report["model"]["runtime"]["cache"].startswith(str(cache))
    assert report["cases"][0]["metrics"]["liver"]["dice"] > 0.85
