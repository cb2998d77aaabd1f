#!/usr/bin/env bash
# Issue 17's acceptance in one command, on this CPU: the comparison, the race to HR@10 >= 0.68
# and the paper protocol, one after the other, then benches/acceptance.py's verdict.
#   NCF_DATA=../shared/data benches/acceptance.sh [OUT_DIR]       (11–14 min on 2 cores, builds apart)
# Runs:
#   1. benches/compare.sh --epochs 2 --batches 256 --threads 2 --repeat 3 --out OUT/compare
#      (NeuMF-8 against every torch configuration; NCF_STEP_TIMES=1 puts the step's phases in
#      the logs);
#   2. benches/time_to_quality.sh OUT/ttq (THREADS=2);
#   3. ncf train --epochs 20 at the defaults (NeuMF-8) into OUT/protocol.log and
#      OUT/protocol.summary.json;
#   4. benches/acceptance.py OUT: OUT/verdict.md and verdict.json, printed; the exit status is
#      its (0: every point holds, 1: one does not, 2: a file is missing).
# On a CPU with AVX-512 the AVX2 path is emulated: every tool's level is forced to AVX2
# (NCF_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
# and the verdict says so. NATIVE=1 leaves the levels alone (AVX-512 numbers on such a CPU).
# Environment: NCF_NO_BUILD=1 skips the builds; TORCH_VENV as for compare.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
data="${NCF_DATA:-$root/../shared/data}"
[[ -d "$data/ncf-ml-1m" ]] || { echo "acceptance.sh: no NCF split at $data/ncf-ml-1m (set NCF_DATA)" >&2; exit 2; }
out="${1:-$root/bench-results/acceptance-$(date +%Y%m%d-%H%M%S)}"
for part in compare ttq protocol.log protocol.summary.json verdict.md; do
    [[ ! -e "$out/$part" ]] || { echo "acceptance.sh: $out/$part exists; give a new folder" >&2; exit 2; }
done
mkdir -p "$out"

flags="$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2-)"
echo "$flags" | tr ' ' '\n' | grep -v '^$' | sort > "$out/cpuinfo-flags.txt"
if grep -qx avx512f "$out/cpuinfo-flags.txt" && [[ "${NATIVE:-0}" != 1 ]]; then
    export NCF_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
    echo "acceptance.sh: this CPU has AVX-512; forcing every tool to AVX2 (an emulation of issue 17's CPU)"
fi
export NCF_DATA="$data"

if [[ "${NCF_NO_BUILD:-0}" != 1 ]]; then
    (cd "$root" && cargo build --release --bin ncf && cargo bench --no-run --bench discorec_ttq)
fi
export NCF_NO_BUILD=1

echo "== 1/3 comparison ($(date +%H:%M:%S))"
NCF_STEP_TIMES=1 "$here/compare.sh" --epochs 2 --batches 256 --threads 2 --repeat 3 --out "$out/compare"
echo "== 2/3 time to quality ($(date +%H:%M:%S))"
THREADS=2 "$here/time_to_quality.sh" "$out/ttq"
echo "== 3/3 paper protocol: ncf train --epochs 20 ($(date +%H:%M:%S))"
"$root/target/release/ncf" train --data "$data/ncf-ml-1m" --epochs 20 --threads 2 \
    --summary-json "$out/protocol.summary.json" 2>&1 | tee "$out/protocol.log"
echo "== verdict ($(date +%H:%M:%S))"
exec python3 "$here/acceptance.py" "$out"
