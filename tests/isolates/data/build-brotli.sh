#!/usr/bin/env bash
# Rebuild brotli.wasm: Google's brotli command-line tool (MIT, see BROTLI-LICENSE), unchanged,
# compiled for WASI preview 1 with Debian's clang and wasi-libc. The test suite uses the
# committed binary, so neither the toolchain nor the source is needed to run the tests.
#   apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
#   pip download --no-binary :all: --no-deps brotli==1.2.1   # the sdist carries the C sources
set -euo pipefail
src=${1:?usage: build-brotli.sh BROTLI_SOURCE_DIR (the unpacked brotli-1.2.1 sdist)}
here=$(cd "$(dirname "$0")" && pwd)
cd "$src/c"
# This wasi-libc lacks chmod/chown; the shim answers them (WASI has no permissions to copy).
/usr/lib/llvm-14/bin/clang --target=wasm32-wasi --sysroot=/usr -O2 -D_WASI_EMULATED_PROCESS_CLOCKS -Iinclude \
  -Wl,--strip-all -o "$here/brotli.wasm" tools/brotli.c common/*.c dec/*.c enc/*.c "$here/brotli-wasi-shim.c" \
  -lm -lwasi-emulated-process-clocks
