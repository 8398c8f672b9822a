#!/usr/bin/env bash
# Run external test suites (CPython's regression tests, tornado's tests) natively and
# under the Arrakis shim, and diff the per-test outcomes.  See README.md.
#
#   compat-tests/external/run.sh [cpython] [tornado] [--quick] [--no-build] [--dummy] ...
#
# Extra options go to run_external.py (--help lists them).  Raw logs, results.json and
# summary.txt go to $ARRAKIS_EXTERNAL_OUT (default: <workspace>/target/external-tests).
# Exit status: 0 = no reproducible difference, 1 = differences, 2 = setup problem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

build=1
dummy=0
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --dummy) dummy=1; args+=("$a") ;;
        -h|--help) sed -n '2,9p' "$0"; args+=("$a"); build=0 ;;
        *) args+=("$a") ;;
    esac
done

# The real interpreter, not the pyenv shim script: the tests must run in the process we
# launch (and under the shim), not in a wrapper that re-execs.
if [[ -n "${ARRAKIS_PYTHON:-}" ]]; then
    py="$(readlink -f "$ARRAKIS_PYTHON")"
else
    py="$(readlink -f "$(python3 -c 'import sys; print(sys.executable)')")"
fi
[[ -x "$py" ]] || { echo "error: no python interpreter ($py)" >&2; exit 2; }

export ARRAKIS_EXTERNAL_OUT="${ARRAKIS_EXTERNAL_OUT:-$root/target/external-tests}"
mkdir -p "$ARRAKIS_EXTERNAL_OUT"

if [[ $build == 1 && $dummy == 0 ]]; then
    echo "== cargo build --release (in $root)"
    (cd "$root" && cargo build --release) || { echo "error: cargo build failed" >&2; exit 2; }
fi

# Hard upper bound for the whole thing (each suite run, and each re-run, has its own
# timeout inside the driver; this is the backstop, inside CI's 90 minutes).
total="${ARRAKIS_EXTERNAL_TIMEOUT:-2700}"
exec timeout --foreground --kill-after=60 "$total" \
    "$py" "$here/run_external.py" --python "$py" "${args[@]}"
