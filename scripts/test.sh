#!/usr/bin/env bash
# Run the test suite (the same command CI runs). Fails when no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -n 2 --dist loadfile -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi
exit "$rc"
