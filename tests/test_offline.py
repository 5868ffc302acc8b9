"""No usage data leaves the machine: importing medseg turns off the telemetry OpenVINO, NNCF and MLflow send by default
(`medseg.offline`). Checked in fresh interpreters with a clean environment (no CI or pytest variables, which some of
these libraries treat as an opt-out of their own) and an empty HOME, where they would write their client ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from infer_fixtures import make_model_folder

PROBE = """
import json, sys
{prelude}
from mlflow.telemetry.utils import is_telemetry_disabled
out = {{"mlflow_disabled": is_telemetry_disabled()}}
if {full}:
    import openvino, openvino.tools.ovc.utils as ovc_utils, nncf.telemetry.wrapper as nncf_wrapper
    out |= {{"ovc_telemetry": ovc_utils.tm.__name__, "nncf_telemetry": type(nncf_wrapper.telemetry).__name__,
            "convert_model": hasattr(openvino, "convert_model")}}
print(json.dumps(out))
"""

OPT_OUTS = ("CI", "TF_BUILD", "JENKINS_URL", "GITHUB_ACTIONS", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY",
            "DO_NOT_TRACK", "BUILDKITE", "CIRCLECI", "TRAVIS", "GITLAB_CI", "BITBUCKET_BUILD_NUMBER",
            "CODEBUILD_BUILD_ARN", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME",
            "RUNBOT_WORKER_ID")  # fmt: skip


def test_the_probe_clears_every_ci_marker_mlflow_honours() -> None:
    """The probes below need telemetry ON without medseg: any CI marker MLflow reads (its own list) would turn it off
    on that CI provider and fail them there, so every one is cleared."""
    import inspect
    import re

    from mlflow.telemetry import utils

    source = inspect.getsource(utils._is_ci_env_or_testing)
    markers = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source))
    assert {"CI", "TEAMCITY_VERSION"} <= markers, "MLflow's CI list moved: read it again"
    assert markers <= set(OPT_OUTS), sorted(markers - set(OPT_OUTS))


def _clean_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OPT_OUTS}
    return env | {"HOME": str(home)}


def _probe(home, prelude: str, full: bool) -> dict:
    code = PROBE.format(prelude=prelude, full=full)
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(home), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_medseg_turns_the_telemetry_off(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    state = _probe(home, "import medseg", full=True)
    assert state == {"mlflow_disabled": True, "ovc_telemetry": "openvino.tools.ovc.telemetry_stub",
                     "nncf_telemetry": state["nncf_telemetry"], "convert_model": True}  # fmt: skip
    assert state["nncf_telemetry"] != "NNCFTelemetry"
    assert list(home.iterdir()) == []  # no ~/intel/openvino_ga_cid, no ~/.config/mlflow


def test_the_probe_sees_telemetry_when_medseg_is_not_imported(tmp_path):
    """The control: in the same clean environment, without medseg, MLflow's telemetry is on (only MLflow is probed
    here: importing OpenVINO or NNCF without medseg would try to send an event)."""
    home = tmp_path / "home"
    home.mkdir()
    assert _probe(home, "", full=False) == {"mlflow_disabled": False}


@pytest.mark.slow
def test_infer_with_first_use_export_writes_nothing_to_home(shared, tmp_path):
    """`medseg infer` on a real DICOM study with a model not yet exported: OpenVINO's converter runs, and HOME gets no
    telemetry id (only matplotlib's local font cache, which torch's export path builds)."""
    home = tmp_path / "home"
    home.mkdir()
    model = make_model_folder(tmp_path / "model", seed=1, roi=(64, 64, 64))
    medseg = os.path.join(os.path.dirname(sys.executable), "medseg")
    src = shared / "ct/chaos_ct_sample/dicom"
    args = [medseg, "infer", str(src), "--model", str(model), "--out", str(tmp_path / "o")]
    env = _clean_env(home) | {"MEDSEG_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache" / "openvino").is_dir()  # the converter did run
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert not (home / "intel").exists(), written
    assert all(w.startswith((".cache/matplotlib/", ".config/matplotlib")) for w in written), written  # font cache only
