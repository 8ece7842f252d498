# Sourced by the scripts: where things are. No side effects beyond exports.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PEAQOS_CACHE="${PEAQOS_CACHE:-$HOME/.cache/peaqos}"
export PEAQOS_VENV="${PEAQOS_VENV:-$PEAQOS_CACHE/venv}"
export PEAQOS_BIN="${CARGO_TARGET_DIR:-$root/target}/release/peaqos"
export PEAQOS_REF_CLI="$PEAQOS_VENV/bin/peaqos"
# The reference SDK can send usage telemetry: never from here.
export DO_NOT_TRACK=1 PEAQOS_TELEMETRY=0
