#!/usr/bin/env bash
# Runs fuzz targets: fuzz/run.sh SECONDS [TARGET ...] (default: every target), each for SECONDS
# on its corpus (fuzz/seed.sh builds it), with AddressSanitizer and debug assertions (overflow
# checks), a 10 s per-input timeout (a hang is a finding) and a 2 GB memory limit (an input that
# needs more is a finding: limits must refuse it first). Prints libFuzzer's final stats; exits
# non-zero on the first crash, leaving the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET ...]}"
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ratings item_meta users ncf_split id_map config checkpoint serve)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  case "$t" in checkpoint) max_len=65536 ;; *) max_len=16384 ;; esac
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t: ${secs}s"
  set +e
  cargo fuzz run -O -a "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="artifacts/$t/" 2>&1 \
    | grep -E --line-buffered '^(#[0-9]+ *(DONE|INITED)|stat::|==[0-9]+==|SUMMARY|thread .* panicked|.*panicked at|Done [0-9]+ runs|artifact_prefix|Test unit written|INFO: seed corpus)'
  status=${PIPESTATUS[0]}
  set -e
  echo "corpus/$t: $(find "corpus/$t" -type f | wc -l) files, $(du -sk "corpus/$t" | cut -f1) KB"
  if [ "$status" -ne 0 ]; then
    echo "FAILED: $t (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
