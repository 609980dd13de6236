#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ in turn (libFuzzer, nightly toolchain).
#
#   scripts/fuzz.sh [BUDGET] [TARGET...]
#
# BUDGET is seconds per target (`20`, `300s`) or a number of inputs per target (`1000000runs`);
# default 60 seconds. TARGETs default to every target (`cargo fuzz list`). Installs cargo-fuzz
# from crates.io when it is missing. Each target starts from its committed seeds
# (fuzz/corpus/<target>/seed-*) and keeps what it finds there; a crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit non-zero (reproduce with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...`).
#
# Environment: FUZZ_JOBS (parallel libFuzzer workers per target, default 1), FUZZ_NICE (nice
# level, default 10), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

budget="${1:-60}"
shift || true

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz || cargo install cargo-fuzz
fi

case "$budget" in
    *runs) limit="-runs=${budget%runs}" ;;
    *s) limit="-max_total_time=${budget%s}" ;;
    *) limit="-max_total_time=${budget}" ;;
esac

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# -a: debug assertions and overflow checks on; -s none: safe Rust needs no sanitizer, and
# twophase_fuzz's allocator already aborts on any allocation above 64 MiB.
build=(-O -a -s none)
# The everyday targets build small values (Scale::Small) and take inputs up to 64 KiB: past
# the small NetLimits' 4 KiB frames and the 64-byte wal payloads, so thousands of inputs a
# second. `limits` runs every body at the real limits (16 MiB values from a few bytes, raw
# inputs up to 1 MiB): milliseconds an input, so give it a smaller budget of its own.
flags=(-rss_limit_mb=2048 -timeout=60 -print_final_stats=1)
max_len_for() {
    if [ "$1" = limits ]; then echo 1048576; else echo 65536; fi
}
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
    flags+=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

echo "== building ${#targets[@]} fuzz targets"
nice -n "${FUZZ_NICE:-10}" cargo +nightly fuzz build "${build[@]}"

status=0
for target in "${targets[@]}"; do
    echo "== fuzzing $target ($limit)"
    mkdir -p "corpus/$target"
    # shellcheck disable=SC2086
    if ! nice -n "${FUZZ_NICE:-10}" cargo +nightly fuzz run "${build[@]}" "$target" "corpus/$target" -- \
        "$limit" -max_len="$(max_len_for "$target")" "${flags[@]}" ${FUZZ_ARGS:-}; then
        echo "!! $target failed: see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
