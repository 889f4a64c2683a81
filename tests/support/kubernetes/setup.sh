#!/usr/bin/env bash
# Install kubernetes-validate (PyPI) into a venv, pinned.
#
#   setup.sh VENV_DIR
#
# Idempotent: pip runs only when VENV_DIR lacks a finished install of exactly these pins.
# Prints "ok VENV_DIR" on success; on failure prints pip's log to stderr and exits non-zero.
set -euo pipefail
if [ "$#" -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
VENV_DIR=$1
PY=${PYTHON:-python3}
# Every package of a resolved, tested install (Python 3.11, 2026-12-02).
PINS='
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
'
STAMP="$VENV_DIR/.kiln-pins"
if [ -x "$VENV_DIR/bin/kubernetes-validate" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(printf '%s' "$PINS")" ]; then
    echo "ok $VENV_DIR"
    exit 0
fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
rm -rf "$VENV_DIR"
if ! { "$PY" -m venv "$VENV_DIR" && "$VENV_DIR/bin/pip" install -q $PINS; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    exit 1
fi
printf '%s' "$PINS" > "$STAMP"
echo "ok $VENV_DIR"
