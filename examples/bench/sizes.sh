#!/bin/sh
# Size of the `handover` CLI binary per feature set (release profile), unstripped and stripped,
# as a markdown table. Builds one set after the other in the workspace's target directory
# (each build after the first recompiles only what the set changes).
#
#   sh examples/bench/sizes.sh            # default, +github, +s3, +http
#
# Needs `strip` (binutils). Takes a few minutes per set on a small machine.
set -eu

cd "$(dirname "$0")/../.."
out=$(mktemp -d "${TMPDIR:-/tmp}/handover-sizes.XXXXXX")
trap 'rm -rf "$out"' EXIT INT TERM
target=${CARGO_TARGET_DIR:-target}

mib() {
    awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
}

rows=""
for set in "file" "file,github" "file,s3" "file,http"; do
    case $set in
        file) label="default (file)" ;;
        *) label="+${set#file,}" ;;
    esac
    echo "sizes: building --features $set" >&2
    cargo build --release --quiet --bin handover --no-default-features --features "$set" >&2
    cp "$target/release/handover" "$out/handover"
    unstripped=$(wc -c < "$out/handover")
    strip "$out/handover"
    stripped=$(wc -c < "$out/handover")
    rows="$rows| $label | \`$set\` | $(mib "$unstripped") | $(mib "$stripped") |
"
done

echo "| \`handover\` binary | features | unstripped | stripped |"
echo "|---|---|---:|---:|"
printf '%s' "$rows"
