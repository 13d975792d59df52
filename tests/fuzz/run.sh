#!/usr/bin/env bash
# Runs every fuzz target briefly (SECONDS_EACH, default 30) from the small seed corpus.
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain use them.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
seconds=${SECONDS_EACH:-30}
for target in config checksum elf archive; do
  corpus=$(mktemp -d)
  cp seeds/"$target"/* "$corpus"/
  echo "== $target ($seconds s)"
  cargo fuzz run --fuzz-dir . "$target" "$corpus" -- -max_total_time="$seconds" -max_len=65536 2>&1 | tail -n 3
  rm -rf "$corpus"
done
