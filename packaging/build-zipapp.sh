#!/usr/bin/env bash
# Build dist/edgenode.pyz: one self-contained executable file of the node (a shiv zipapp)
# holding edgenode and its runtime dependencies pinned to the versions installed here.
#   usage: packaging/build-zipapp.sh [OUTPUT]     (needs: make setup)
# Run it with `python3 dist/edgenode.pyz serve ...`. Native parts (wasmtime, apsw) are
# extracted once to $SHIV_ROOT (default ~/.shiv) on first start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-dist/edgenode.pyz}
mkdir -p "$(dirname "$OUT")" build
"$PY" packaging/pins.py > build/requirements.txt
# Ship the shared Python runtime prebuilt (portable WebAssembly; its native code is compiled
# once on the host at first start), so the single file needs no componentize-py at run time.
rm -rf edgenode/isolates/prebuilt
WASM=$("$PY" -m edgenode runtime build 2>/dev/null | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d["dir"] + "/python-" + d["key"] + ".wasm")')
mkdir -p edgenode/isolates/prebuilt
cp "$WASM" edgenode/isolates/prebuilt/
trap 'rm -rf edgenode/isolates/prebuilt' EXIT
"$PY" -m shiv --reproducible --compressed \
    --python '/usr/bin/env python3' \
    --entry-point edgenode.cli:main \
    --output-file "$OUT" \
    -r build/requirements.txt --no-deps . >build/shiv.log 2>&1 || { cat build/shiv.log >&2; exit 1; }
echo "built $OUT ($(du -h "$OUT" | cut -f1))"
