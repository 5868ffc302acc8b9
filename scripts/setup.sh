#!/usr/bin/env bash
# Set up a fresh machine: Debian tools (dciodvfy), and the validated Python environment in .venv/ from the lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian tools, each with what needs it; one apt-get update, only when something is missing:
# dicom3tools (dciodvfy checks every SEG), orthanc + orthanc-dicomweb + dcmtk (the PACS service tests run a real
# Orthanc and send with storescu), chromium (validation report PDF, monitoring dashboard test), time (GNU time:
# bench/ measures wall time and peak RSS of a command with /usr/bin/time -v; CI runs bench_infer's short form).
need=()
[ -x /usr/bin/time ] || need+=(time)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then  # headless browser for the monitoring dashboard test
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "uv==0.13.9" 2>/dev/null || .venv/bin/python -m pip install -q uv
# torch's CPU build lives in PIP_FIND_LINKS on these machines; the lock pins it (an unpinned torch pulls CUDA).
FIND_LINKS=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND_LINKS=(--find-links "$PIP_FIND_LINKS")
.venv/bin/uv pip install -q --python .venv/bin/python "${FIND_LINKS[@]}" -r requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
.venv/bin/python - <<'PY'
import torch
if torch.version.cuda is not None:
    raise SystemExit(f"torch {torch.__version__} is a CUDA build; the validated environment is CPU torch 2.13.0")
print(f"medseg environment ready: torch {torch.__version__} (CPU build)")
PY
