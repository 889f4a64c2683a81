#!/usr/bin/env bash
# Install Seldon MLServer (sklearn runtime) into a venv and write a tiny model.
#
#   setup.sh VENV_DIR MODEL_DIR
#
# Idempotent: pip runs only when VENV_DIR lacks a finished install of exactly
# these pins; the model is trained only when MODEL_DIR/model.joblib is missing.
# Prints only "ok VENV_DIR MODEL_DIR" on success; on failure prints the
# install/train log to stderr and exits non-zero.
# Python: $PYTHON if set, else python3. MLServer 1.7.1 needs 3.9 <= py < 3.13.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VENV_DIR MODEL_DIR" >&2
    exit 2
fi
VENV_DIR=$1
MODEL_DIR=$2
PY=${PYTHON:-python3}

# Every package of a resolved, tested install (Python 3.11, 2026-12-02).
# Pinning the whole set keeps a later upstream release from breaking it.
PINS='
mlserver==1.7.1
mlserver-sklearn==1.7.1
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiokafka==0.14.0
aiosignal==1.4.0
annotated-types==0.8.0
anyio==4.16.0
asgiref==3.13.0
async-timeout==5.0.1
attrs==26.1.0
brotli==1.2.1
certifi==2026.10.19.post1
click==8.5.1
cloudpickle==3.1.3
fastapi==0.115.14
frozenlist==1.8.0
gevent==26.9.0
geventhttpclient==2.6.1
googleapis-common-protos==1.76.0
greenlet==3.3.2
grpcio==1.85.3
h11==0.16.0
idna==3.20
importlib_resources==6.5.2
joblib==1.6.0
ml_dtypes==0.5.4
multidict==7.2.1
narwhals==2.29.0
numpy==2.4.6
opentelemetry-api==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2
opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-grpc==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-util-http==0.66b2
orjson==3.13.0
packaging==26.4
pandas==3.1.1
prometheus_client==0.26.0
propcache==0.5.4
protobuf==6.33.6
py-grpc-prometheus==0.8.0
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
python-dateutil==4.0.0
python-dotenv==1.2.4
python-multipart==0.0.34
python-rapidjson==1.25
scikit-learn==1.9.1
scipy==1.17.1
starlette==0.46.2
starlette_exporter==0.24.0
threadpoolctl==3.8.0
tritonclient==2.73.0
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
wrapt==2.5.2
yarl==1.25.1
zope.event==6.2
zope.interface==8.7
'
STAMP="$VENV_DIR/.kiln-mlserver-pins"
LOG=$(mktemp "${TMPDIR:-/tmp}/kiln-mlserver-setup.XXXXXX")
trap 'rm -f "$LOG"' EXIT
fail() {
    echo "setup.sh: $1 (log follows)" >&2
    cat "$LOG" >&2
    exit 1
}

if [ ! -x "$VENV_DIR/bin/mlserver" ] || [ ! -f "$STAMP" ] \
    || [ "$(cat "$STAMP")" != "$(printf '%s' "$PINS")" ]; then
    "$PY" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] < (3, 13)))' \
        >>"$LOG" 2>&1 || fail "$PY must be Python >=3.9,<3.13 (mlserver 1.7.1); set PYTHON"
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        "$PY" -m venv "$VENV_DIR" >>"$LOG" 2>&1 || fail "venv creation failed"
    fi
    rm -f "$STAMP"
    printf '%s\n' $PINS >"$VENV_DIR/.kiln-mlserver-requirements.txt"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV_DIR/bin/pip" install -q \
        -r "$VENV_DIR/.kiln-mlserver-requirements.txt" >>"$LOG" 2>&1 \
        || fail "pip install failed"
    "$VENV_DIR/bin/python" -c 'import mlserver, mlserver_sklearn, sklearn, joblib' \
        >>"$LOG" 2>&1 || fail "import check failed"
    printf '%s' "$PINS" >"$STAMP"
fi

mkdir -p "$MODEL_DIR"
if [ ! -f "$MODEL_DIR/model.joblib" ]; then
    "$VENV_DIR/bin/python" - "$MODEL_DIR/model.joblib" >>"$LOG" 2>&1 <<'PY' || fail "training failed"
import os, sys
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

# Iris-shaped: 4 float features, classes 0/1/2. Deterministic (fixed rows, seed).
X = np.array([
    [5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [4.7, 3.2, 1.3, 0.2],
    [7.0, 3.2, 4.7, 1.4], [6.4, 3.2, 4.5, 1.5], [6.9, 3.1, 4.9, 1.5],
    [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9], [7.1, 3.0, 5.9, 2.1],
])
y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
model = LogisticRegression(max_iter=1000, random_state=0).fit(X, y)
assert list(model.predict([[5.0, 3.4, 1.5, 0.2], [6.5, 3.0, 5.5, 2.0]])) == [0, 2]
tmp = sys.argv[1] + ".tmp"
joblib.dump(model, tmp)
os.replace(tmp, sys.argv[1])
PY
fi
if [ ! -f "$MODEL_DIR/model-settings.json" ]; then
    cat >"$MODEL_DIR/model-settings.json" <<'JSON'
{
  "name": "iris-like",
  "implementation": "mlserver_sklearn.SKLearnModel",
  "parameters": {
    "uri": "./model.joblib"
  }
}
JSON
fi

echo "ok $VENV_DIR $MODEL_DIR"
