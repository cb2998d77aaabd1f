#!/usr/bin/env bash
# Time to test HR@10 >= TARGET (default 0.68) on the NCF ML-1M split, side by side in one run,
# one tool after the other (never at the same time):
#   1. ncf-rs:   ncf train --preset fast --stop-at-hr TARGET (MF trained by implicit ALS), on
#                THREADS threads and on one thread (discorec's count); then --preset fast-gmf,
#                the fastest gradient-trained (neural) recipe. Each is timed by its own wall
#                clock, data loading included; the test data decides the stop: a benchmark mode,
#                not a held-out score.
#   2. discorec: implicit ALS (benches/discorec_ttq.rs; load + fit + evaluation, one thread: it
#                has none). ALS cannot stop between iterations, so its fastest honest setting is
#                searched: for each (alpha, regularization) in DISCOREC_SETTINGS (discorec's
#                defaults 40 and 0.01, and the preset's 10 and 1) and each factor count in
#                DISCOREC_FACTORS, the fewest iterations (1, 2, ... up to 20) whose test HR@10
#                reaches TARGET, each fitted and timed from scratch; the fastest of those is
#                discorec's time. Like --stop-at-hr, this lets the test data pick the stop, so the
#                peer gets the same oracle ncf-rs gets.
#   3. PyTorch:  the reference trainer (benches/reference/torch_ncf.py, dense fused Adam) with
#                fast-gmf's settings (it has no ALS), when a python with torch is found
#                (TORCH_PYTHON, else the venv of benches/compare.sh); its time is load + the
#                seconds of its epochs up to the first whose test HR@10 reaches TARGET.
# Usage: NCF_DATA=../shared/data benches/time_to_quality.sh [OUT_DIR]
# Environment: TARGET (0.68), THREADS (all cores), DISCOREC_FACTORS ("16 24 32 48 64"),
# DISCOREC_SETTINGS ("40:0.01 10:1", alpha:regularization), NCF_NO_BUILD=1, NO_TORCH=1.
# To time a CPU without AVX-512 on one that has it, force every tool's level:
#   NCF_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
#       benches/time_to_quality.sh     (discorec is built for baseline x86-64: SSE2 either way)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
data="${NCF_DATA:-$root/../shared/data}/ncf-ml-1m"
target="${TARGET:-0.68}"
threads="${THREADS:-$(nproc)}"
out="${1:-$root/bench-results/ttq-$(date +%Y%m%d-%H%M%S)}"
[[ -d "$data" ]] || { echo "time_to_quality.sh: no NCF split at $data (set NCF_DATA)" >&2; exit 1; }
mkdir -p "$out"
if [[ "${NCF_NO_BUILD:-0}" != 1 ]]; then
    (cd "$root" && cargo build --release --bin ncf && cargo bench --no-run --bench discorec_ttq) >&2
fi
ncf="$root/target/release/ncf"
peer="$(ls -t "$root"/target/release/deps/discorec_ttq-* 2>/dev/null | grep -v '\.d$' | head -1)"
[[ -x "$peer" ]] || { echo "time_to_quality.sh: the discorec_ttq bench binary is missing (cargo bench --no-run --bench discorec_ttq)" >&2; exit 1; }
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
{
    echo "cpu: $cpu ($(nproc) cores), $threads threads; ncf-rs $(git -C "$root" describe --always --dirty); target test HR@10 >= $target"
    echo "data: $data"
} | tee "$out/env.txt"

# ncf_run NAME ARGS...: one ncf-rs run into $out/NAME.log; sets ncf_s, ncf_hr, ncf_simd.
ncf_run() {
    local name="$1"
    shift
    echo "== ncf-rs: ncf train $* --stop-at-hr $target" | tee "$out/$name.log"
    "$ncf" train --data "$data" "$@" --stop-at-hr "$target" --summary-json "$out/$name.summary.json" --force 2>&1 \
        | tee -a "$out/$name.log"
    ncf_s="$(grep -o 'time to test HR@10 >= [0-9.]*: [0-9.]* s' "$out/$name.log" | awk '{print $(NF-1)}')"
    ncf_hr="$(grep -o 'reached at epoch [0-9]* with [0-9.]*' "$out/$name.log" | awk '{print $NF}')"
    ncf_simd="$(grep -o 'SIMD [^,]*' "$out/$name.log" | head -1)"
}
ncf_run ncf --preset fast --threads "$threads"
fast_s="$ncf_s" fast_hr="$ncf_hr" fast_simd="$ncf_simd"
ncf_run ncf-1thread --preset fast --threads 1
one_s="$ncf_s" one_hr="$ncf_hr"
ncf_run ncf-gmf --preset fast-gmf --threads "$threads"
gmf_s="$ncf_s" gmf_hr="$ncf_hr"

settings="${DISCOREC_SETTINGS:-40:0.01 10:1}"
echo "== discorec: implicit ALS, the fewest iterations reaching $target for (alpha:regularization) $settings," \
    "factors ${DISCOREC_FACTORS:-16 24 32 48 64}" | tee "$out/discorec.log"
for ar in $settings; do
    for f in ${DISCOREC_FACTORS:-16 24 32 48 64}; do
        for it in $(seq 1 20); do
            line="$("$peer" --data "$data" --factors "$f" --iterations "$it" --alpha "${ar%%:*}" \
                --regularization "${ar##*:}" | grep '^{')"
            echo "$line" | tee -a "$out/discorec.log"
            python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["test_hr"] >= float(sys.argv[2]) else 1)' \
                "$line" "$target" && break
        done
    done
done
read -r disco_s disco_hr disco_cfg < <(python3 - "$out/discorec.log" "$target" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
hits = [r for r in runs if r["test_hr"] >= float(sys.argv[2])]
if hits:
    r = min(hits, key=lambda r: r["wall_s"])
    print(r["wall_s"], r["test_hr"],
          f'factors_{r["factors"]},_{r["iterations"]}_iterations,_alpha_{r["alpha"]},_regularization_{r["regularization"]}')
else:
    print("not_reached", "", "none_of_the_grid")
PY
)
disco_cfg="${disco_cfg//_/ }"

torch_py="${TORCH_PYTHON:-$HOME/.cache/ncf-rs/torch-venv/bin/python}"
torch_row=""
if [[ "${NO_TORCH:-0}" != 1 ]] && "$torch_py" -c 'import torch' >/dev/null 2>&1; then
    echo "== PyTorch reference, fast-gmf's settings, dense fused Adam" | tee "$out/torch.log"
    "$torch_py" -c 'import torch; print("torch", torch.__version__, "SIMD", torch.backends.cpu.get_cpu_capability())' \
        | tee -a "$out/torch.log" "$out/env.txt"
    "$torch_py" "$here/reference/torch_ncf.py" --data "$data" --model gmf --factors 32 --batch 4096 --lr 0.008 \
        --epochs 3 --threads "$threads" --dense-adam --metrics-jsonl "$out/torch.jsonl" 2>&1 | tee -a "$out/torch.log"
    torch_row="$(python3 - "$out/torch.log" "$out/torch.jsonl" "$target" <<'PY'
import json, re, sys
log, jsonl, target = sys.argv[1], sys.argv[2], float(sys.argv[3])
load = float(re.search(r"loaded in ([0-9.]+) s", open(log).read()).group(1))
t, hit = load, None
for line in open(jsonl):
    r = json.loads(line)
    t += r["sampling_s"] + r["training_s"] + r["eval_s"]
    if r["test_hr"] >= target:
        hit = (r["epoch"], r["test_hr"], t)
        break
print(f"| PyTorch reference (GMF-32, batch 4096, lr 0.008, dense fused Adam) | "
      + (f"{hit[2]:.2f} | epoch {hit[0]}: {hit[1]:.4f} |" if hit else f"not reached in 3 epochs ({t:.2f} s) | |"))
PY
)"
fi

{
    echo
    echo "| tool | seconds to test HR@10 >= $target (wall) | test HR@10 |"
    echo "|---|---:|---:|"
    echo "| ncf-rs \`--preset fast\` (MF-24, implicit ALS; $fast_simd, $threads threads) | ${fast_s:-not reached} | ${fast_hr:-} |"
    echo "| ncf-rs \`--preset fast\`, 1 thread | ${one_s:-not reached} | ${one_hr:-} |"
    echo "| ncf-rs \`--preset fast-gmf\` (GMF-32, Adam; $threads threads) | ${gmf_s:-not reached} | ${gmf_hr:-} |"
    echo "| discorec 0.3 implicit ALS, fastest setting reaching the target ($disco_cfg, 1 thread) | ${disco_s/not_reached/not reached} | $disco_hr |"
    [[ -n "$torch_row" ]] && echo "$torch_row"
    if [[ "$disco_s" != not_reached ]]; then
        echo
        for row in "--preset fast:$fast_s" "--preset fast, 1 thread:$one_s" "--preset fast-gmf:$gmf_s"; do
            if [[ -n "${row##*:}" ]]; then
                python3 -c 'import sys; n,a,b=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]); print(f"ncf-rs {n} takes {a/b:.2f}x discorec'"'"'s wall time")' \
                    "${row%:*}" "${row##*:}" "$disco_s"
            fi
        done
    fi
} | tee "$out/table.md"
echo "wrote $out"
