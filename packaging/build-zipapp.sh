#!/usr/bin/env bash
# Build dist/edgenode.pyz: one self-contained executable file of the node (a shiv zipapp)
# holding edgenode and its runtime dependencies pinned to the versions installed here.
#   usage: packaging/build-zipapp.sh [OUTPUT]     (needs: make setup)
#   ARCH=arm64 packaging/build-zipapp.sh dist/edgenode-arm64.pyz   (cross-build for 64-bit ARM)
# Run it with `python3 dist/edgenode.pyz serve ...`. Native parts (wasmtime, apsw) are
# extracted once to $SHIV_ROOT (default ~/.shiv) on first start.
#
# A cross-build (ARCH=arm64) fetches the same pinned versions as binary wheels for
# manylinux aarch64 and the same CPython minor as this build's Python (pip's --platform,
# --python-version, --only-binary=:all:), into build/wheels-<arch> (kept as a cache), and
# checks that every ELF file in the result is for that machine. The result runs only on an
# arm64 host with that Python minor (see packaging/abi.py for what it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-dist/edgenode.pyz}
ARCH=${ARCH:-native}
mkdir -p "$(dirname "$OUT")" build
"$PY" packaging/pins.py > build/requirements.txt
# Ship the shared Python runtime prebuilt (portable WebAssembly; its native code is compiled
# once on the host at first start), so the single file needs no componentize-py at run time.
rm -rf edgenode/isolates/prebuilt
WASM=$("$PY" -m edgenode runtime build 2>/dev/null | "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(d["dir"] + "/python-" + d["key"] + ".wasm")')
mkdir -p edgenode/isolates/prebuilt
cp "$WASM" edgenode/isolates/prebuilt/
trap 'rm -rf edgenode/isolates/prebuilt' EXIT
SHIV=("$PY" -m shiv --reproducible --compressed --python '/usr/bin/env python3' --entry-point edgenode.cli:main
      --output-file "$OUT")
case "$ARCH" in
  native)
    "${SHIV[@]}" -r build/requirements.txt --no-deps . >build/shiv.log 2>&1 || { cat build/shiv.log >&2; exit 1; }
    ;;
  arm64)
    MACHINE=aarch64
    PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    ABI=cp${PYVER/./}
    WHEELS=build/wheels-$ARCH-$ABI
    PLATFORM=(--platform manylinux2014_$MACHINE --platform manylinux_2_17_$MACHINE --platform manylinux_2_28_$MACHINE
              --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none)
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -r build/requirements.txt -d "$WHEELS"
    rm -f "$WHEELS"/edgenode-*.whl
    "$PY" -m pip wheel -q --no-deps --no-build-isolation . -w "$WHEELS" >build/wheel.log 2>&1 \
      || "$PY" -m pip wheel -q --no-deps . -w "$WHEELS" >build/wheel.log 2>&1 || { cat build/wheel.log >&2; exit 1; }
    VERSION=$("$PY" -c 'import edgenode; print(edgenode.__version__)')
    "${SHIV[@]}" --no-index --find-links "$WHEELS" "${PLATFORM[@]}" -r build/requirements.txt --no-deps \
      "edgenode==$VERSION" >build/shiv.log 2>&1 || { cat build/shiv.log >&2; exit 1; }
    GOT=$("$PY" packaging/abi.py "$OUT" --arch) || { echo "$OUT holds native code for other machines" >&2; exit 1; }
    [ "$GOT" = "$ARCH" ] || { echo "$OUT holds $GOT code, not $ARCH" >&2; exit 1; }
    ;;
  *)
    echo "ARCH must be native or arm64, not $ARCH" >&2; exit 2
    ;;
esac
echo "built $OUT ($(du -h "$OUT" | cut -f1))"
