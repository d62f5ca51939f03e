#!/usr/bin/env bash
# The test command (README): unit and integration tests (real sluice processes driven by
# librdkafka and raw protocol bytes, and the benchmark harness's self-checks), the client
# compatibility checks (Java client, kafka-python, kcat, franz-go), a smoke run of the Apache
# Kafka reference broker the benchmarks compare against, and a short coverage-guided fuzzing
# pass. Installs what it needs first.
#
#   scripts/test.sh            everything (what CI runs)
#   FUZZ_SECONDS=0 scripts/test.sh   skip fuzzing
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo build --workspace --bins (the harness tests run sluice-bench, built next to sluice)"
cargo build --workspace --bins || failed=$((failed + 1))

echo "== cargo test"
cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
while read -r p f; do
  passed=$((passed + p)); failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi

# Runs a check that ends with a line "PREFIX: N passed, M failed" and adds its counts; a
# non-zero exit with no failure counted counts as one failure.
counted() {
  local title="$1" prefix="$2"
  shift 2
  echo "== $title"
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]} p=0 f=0
  read -r p f < <(sed -nE "s/^$prefix: ([0-9]+) passed, ([0-9]+) failed.*/\\1 \\2/p" "$log" | tail -n 1) || true
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ "$status" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then failed=$((failed + 1)); fi
}

counted "client compatibility" compat env SLUICE_BIN="${SLUICE_BIN:-target/debug/sluice}" scripts/compat.sh
counted "reference broker smoke (Apache Kafka from Maven Central: start, produce, consume, stop)" \
  kafka-reference scripts/kafka-reference.sh smoke

if [ "${FUZZ_SECONDS:-30}" -gt 0 ]; then
  echo "== fuzz"
  if scripts/fuzz.sh "${FUZZ_SECONDS:-30}"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
fi

echo
echo "sluice: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
