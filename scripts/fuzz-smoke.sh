#!/usr/bin/env bash
# CI's short fuzzing pass (see fuzz/README.md): builds every cargo-fuzz target and runs
# each for FUZZ_SECONDS (default 20) on its committed corpus and regressions. Fails on
# a crash, a timeout or an out-of-memory, printing the input. Skips (exit 0, saying
# why) when cargo-fuzz is not installed and cannot be, or FUZZ_SMOKE=0.
#
#   scripts/fuzz-smoke.sh [build|run|all]   (default all)
#
# `build` only installs cargo-fuzz and builds the targets, so scripts/test.sh can do it
# in the background while the main build and tests run; `run` builds if needed (a no-op
# after `build`) and fuzzes.
#
# cargo-fuzz needs nightly compiler features (sanitizer coverage): with no nightly
# toolchain installed, the stable compiler is used with RUSTC_BOOTSTRAP=1.
#
# The build is what costs (the whole crate with coverage instrumentation), so CI
# builds unoptimised without AddressSanitizer: FUZZ_PROFILE=dev (default) or release,
# FUZZ_SANITIZER=none (default) or address. Long runs by hand: fuzz/README.md.
# Also: FUZZ_TARGETS (space-separated subset), FUZZ_SMOKE=0 (skip).
# The committed corpus is only read; new inputs go to a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
case "$mode" in build | run | all) ;; *) echo "usage: $0 [build|run|all]" >&2; exit 2 ;; esac
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
profile="${FUZZ_PROFILE:-dev}"

skip() {
  echo "fuzz-smoke: SKIPPED: $*" >&2
  echo "fuzz-smoke: the corpus replay in cargo test (tests/it/fuzz_corpus.rs) still runs every committed input" >&2
  exit 0
}

if [ "${FUZZ_SMOKE:-1}" = "0" ]; then
  skip "FUZZ_SMOKE=0"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked --quiet; then
    skip "cargo-fuzz is not installed and 'cargo install cargo-fuzz --locked' failed"
  fi
fi

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

cd fuzz
targets="${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}"
# -a: debug assertions and overflow checks, as in `cargo test`.
flags=(-a -s "$sanitizer")
if [ "$profile" = dev ]; then
  flags+=(--dev)
  # Line numbers in backtraces, without full debug info's link time and disk.
  export CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi
build=(cargo "${toolchain[@]}" fuzz build "${flags[@]}")
run=(cargo "${toolchain[@]}" fuzz run "${flags[@]}")

start=$(date +%s)
echo "fuzz-smoke: building the fuzz targets (${toolchain[*]:-stable with RUSTC_BOOTSTRAP=1}, $profile profile, sanitizer $sanitizer)"
# A target build that fails here (e.g. a toolchain that refuses the nightly flags)
# skips fuzzing loudly instead of failing CI; a crash found while fuzzing fails it.
"${build[@]}" || skip "the fuzz targets did not build (log above)"
echo "fuzz-smoke: built in $(($(date +%s) - start)) s"
[ "$mode" != build ] || exit 0
start=$(date +%s)

scratch="$(mktemp -d "${TMPDIR:-/tmp}/otpdial-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in $targets; do
  rm -rf "artifacts/$t"
  mkdir -p "$scratch/$t" "artifacts/$t"
  dirs=("$scratch/$t" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  log="$scratch/$t.log"
  echo "fuzz-smoke: $t for ${seconds} s"
  # The largest seed decides libFuzzer's default input size; let inputs grow past it.
  if "${run[@]}" "$t" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | tr '\n' ' '
    echo
  else
    failed+=("$t")
    echo "fuzz-smoke: $t FAILED; the end of its log:" >&2
    tail -n 60 "$log" >&2
    for a in artifacts/"$t"/*; do
      [ -f "$a" ] || continue
      echo "fuzz-smoke: input $a (keep it under fuzz/regressions/$t/ once fixed):" >&2
      head -c 4096 "$a" | od -A d -t x1 | head -n 64 >&2
    done
  fi
done

echo "fuzz-smoke: fuzzed in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: crashed: ${failed[*]}" >&2
  exit 1
fi
