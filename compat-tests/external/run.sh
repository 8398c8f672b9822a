#!/usr/bin/env bash
# Run external test suites (CPython's regression tests, tornado's tests) natively and
# under the Arrakis shim, and diff the per-test outcomes.  See README.md.
#
#   compat-tests/external/run.sh [cpython] [tornado] [cpython-net] [--quick] [--no-build]
#                                [--dummy] [--shim-env NAME=VALUE] ...
#
# No suite named: cpython and tornado.  cpython-net: the socket/event-loop tests with the
# shim mode on ARRAKIS_BACKEND=loopback.  Extra options go to run_external.py (--help
# lists them).  Raw logs, results.json and summary.txt go to $ARRAKIS_EXTERNAL_OUT
# (default: <workspace>/target/external-tests).
# Exit status: 0 = no reproducible unlisted difference, 1 = differences, 2 = setup problem.
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
        -h|--help) sed -n '2,12p' "$0"; args+=("$a"); build=0 ;;
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
# The driver gets a deadline 2 minutes inside it, so that it clips its own runs and still
# writes the summary instead of being killed mid-run.
total="${ARRAKIS_EXTERNAL_TIMEOUT:-2700}"
exec timeout --foreground --kill-after=60 "$total" \
    "$py" "$here/run_external.py" --python "$py" --deadline "$((total > 240 ? total - 120 : total / 2))" \
    "${args[@]}"
