#!/usr/bin/env bash
# The one-call GPU check. Prepared here by scripts/gpu-bundle.sh (which fills .gpu/), run on a
# GPU machine (no Rust, no network; CUDA driver, NVRTC, cuBLAS and PyTorch in /opt/torch/.venv)
# from the repository root with .gpu/ carried along:
#   OUT=/some/folder scripts/gpu-check.sh            # on the GPU, in about 7 minutes at most
#   OUT=/some/folder scripts/gpu-check.sh --dry-run  # the same plumbing here, on the CPU, small
# Every step runs under its own timeout, cut to what is left of a 400 s budget, and the script
# goes on past failures. It writes exactly
# these 8 files to $OUT:
#   summary.json      commit, GPU name and driver, and each step's exit status and seconds
#   steps.log         each step's command and the last 200 lines of its output
#   nvidia-smi.txt    nvidia-smi as printed
#   ml1m.jsonl        ncf train, NeuMF-8 on the NCF ML-1M split, batch 256, 20 epochs
#   ml1m-large.jsonl  the same at batch 65,536, 2 epochs
#   torch.jsonl       the PyTorch reference on the same device and split: batch 256, 3 epochs,
#                     then batch 65,536, 2 epochs (each line has its batch)
#   ml20m.jsonl       a generated ML-20M-size dataset (generated there, not carried), split with
#                     999 test negatives: MLPerf's recipe (NeuMF-64, 256-256-128-64, batch
#                     1,048,576, Adam lr 0.0045, β 0.25/0.5) until test HR@10 0.635 or 3 epochs
#                     (NeuMF-8 on the same data, batch 1,048,576, one epoch: in steps.log)
#   res-usage.txt     cuobjdump -res-usage of the kernels NVRTC compiled during the run
# Steps: nvidia-smi, ncf-cuda's parity and check tests (NCF_REQUIRE_GPU=1), the two ML-1M runs,
# the PyTorch reference, the GPU bench, the ML-20M-size run, compute-sanitizer memcheck on a
# short run, cuobjdump.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = --dry-run ] && dry=1
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
B=.gpu
NCF="${NCF_BIN:-$B/bin/ncf}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export NCF_KERNEL_CACHE="$work/kernels"
: > "$work/steps.tsv"
# The eight files exist whatever fails.
for f in summary.json steps.log nvidia-smi.txt ml1m.jsonl ml1m-large.jsonl torch.jsonl ml20m.jsonl res-usage.txt; do
  : > "$OUT/$f"
done

# NVRTC and cuBLAS from PyTorch's wheels (libcuda comes with the driver).
PY=python3
if [ -d /opt/torch/.venv ]; then
  PY=/opt/torch/.venv/bin/python
  for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  export LD_LIBRARY_PATH
fi
if [ $dry = 1 ]; then device=cpu; else device=cuda; export NCF_REQUIRE_GPU=1; fi

# The whole check stays within 7 minutes: every step's timeout is cut to what is left of
# BUDGET seconds (6 min 40 s of steps, the rest for start-up and the summary).
BUDGET=${GPU_CHECK_BUDGET:-400}
t_start=$(date +%s)
# step NAME SECONDS CMD...: runs CMD under a timeout, logs it, records its status and time.
step() {
  local name=$1 secs=$2 t0 rc left
  shift 2
  left=$((BUDGET - ($(date +%s) - t_start)))
  if [ "$left" -lt 5 ]; then
    skip "$name" "out of time (the check's budget is ${BUDGET}s)"
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  t0=$(date +%s%3N)
  echo "=== $name (timeout ${secs}s): $*" >> "$OUT/steps.log"
  timeout "$secs" "$@" > "$work/out.txt" 2>&1
  rc=$?
  tail -n 200 "$work/out.txt" >> "$OUT/steps.log"
  local ms=$(($(date +%s%3N) - t0))
  printf '%s\t%s\t%d.%03d\t\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$work/steps.tsv"
  echo "=== $name: exit $rc" >> "$OUT/steps.log"
  echo "gpu-check: $name: exit $rc"
}
# skip NAME WHY: records a step that could not run here.
skip() {
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$work/steps.tsv"
  echo "=== $1: skipped ($2)" >> "$OUT/steps.log"
  echo "gpu-check: $1: skipped ($2)"
}
have() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; }

# ---- data: the carried ML-1M split, else $NCF_DATA's, else a generated one of the same size
if [ $dry = 1 ]; then users=300 items=200 big_users=2000 big_items=1500 epochs=1 large=1024 huge=4096 tepochs=1 big_epochs=1
else users=6040 items=3706 big_users=138493 big_items=26744 epochs=20 large=65536 huge=1048576 tepochs=3 big_epochs=3; fi
# bash -c "$GEN" NCF DIR USERS ITEMS DENSITY NAME: a generated MovieLens folder, then its NCF
# split in DIR (a command, so that `timeout` can run it).
GEN='"$0" data synth --out "$1-raw" --users "$2" --items "$3" --density "$4" --force >/dev/null &&
  "$0" data split --input "$1-raw" --out "$1" --name "$5" --force >/dev/null'
if [ -f "$B/data/ncf-ml-1m.tar.xz" ] && [ $dry = 0 ]; then
  tar -C "$work" -xJf "$B/data/ncf-ml-1m.tar.xz" && ml1m="$work/ncf-ml-1m"
elif [ -n "${NCF_DATA:-}" ] && [ -d "$NCF_DATA/ncf-ml-1m" ] && [ $dry = 0 ]; then
  ml1m="$NCF_DATA/ncf-ml-1m"
else
  step generate-ml1m-size 120 bash -c "$GEN" "$NCF" "$work/ml1m" "$users" "$items" 0.045 ml1m
  ml1m="$work/ml1m"
fi
step generate-small 60 bash -c "$GEN" "$NCF" "$work/small" 300 200 0.045 small

# ---- 1. the device
if have nvidia-smi; then
  step nvidia-smi 20 sh -c "nvidia-smi > '$OUT/nvidia-smi.txt' 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> '$OUT/nvidia-smi.txt'"
else
  echo "nvidia-smi: not on this machine" > "$OUT/nvidia-smi.txt"
  skip nvidia-smi "not on this machine"
fi

# ---- 2. parity and checks (the tests skip without a device unless NCF_REQUIRE_GPU=1)
for t in parity checks; do
  if [ -x "$B/bin/$t" ]; then step "test-$t" 60 "$B/bin/$t"; else skip "test-$t" "$B/bin/$t not bundled"; fi
done

# ---- 3. ncf train on ML-1M, batch 256 and a large batch
step train-ml1m 150 "$NCF" train --data "$ml1m" --device "$device" --epochs "$epochs" --batch 256 \
  --metrics-jsonl "$OUT/ml1m.jsonl" --force
step train-ml1m-large 60 "$NCF" train --data "$ml1m" --device "$device" --epochs 2 --batch "$large" \
  --metrics-jsonl "$OUT/ml1m-large.jsonl" --force

# ---- 4. the PyTorch reference on the same device and data
if [ -f "$B/torch_ncf.py" ] && "$PY" -c 'import torch' 2>/dev/null; then
  step torch-ml1m 90 "$PY" "$B/torch_ncf.py" --data "$ml1m" --device "$device" --epochs "$tepochs" \
    --batch 256 --metrics-jsonl "$work/torch-256.jsonl"
  step torch-ml1m-large 60 "$PY" "$B/torch_ncf.py" --data "$ml1m" --device "$device" --epochs 2 \
    --batch "$large" --metrics-jsonl "$work/torch-large.jsonl"
  cat "$work/torch-256.jsonl" "$work/torch-large.jsonl" > "$OUT/torch.jsonl" 2>/dev/null
else
  : > "$OUT/torch.jsonl"
  skip torch-ml1m "no torch for $PY, or $B/torch_ncf.py not bundled"
  skip torch-ml1m-large "no torch for $PY, or $B/torch_ncf.py not bundled"
fi

# ---- 5. the GPU bench
if [ -x "$B/bin/gpu-bench" ]; then step gpu-bench 60 "$B/bin/gpu-bench"; else skip gpu-bench "not bundled"; fi

# ---- 6. an ML-20M-size run, generated here (`ncf data synth --preset ml-20m`'s sizes), split
# on the fly with 999 test negatives, MLPerf's NCF recipe, timed to test HR@10 0.635 (the
# data are synthetic: the time is this data's, not ML-20M's). MLPerf's tower is too large for
# the fused step's shared memory, so this run times the reference step (ops and GEMMs).
step generate-ml20m-size 120 "$NCF" data synth --out "$work/ml20m" --users "$big_users" --items "$big_items" \
  --density 0.005400 --force
step train-ml20m 150 "$NCF" train --data "$work/ml20m" --device "$device" --test-negatives 999 \
  --factors 64 --layers 256,256,128,64 --batch "$huge" --lr 0.0045 --beta1 0.25 --beta2 0.5 \
  --epochs "$big_epochs" --stop-at-hr 0.635 --metrics-jsonl "$OUT/ml20m.jsonl" --force
# The same data with NeuMF-8, which the fused step takes, at the same batch (√-scaled rate);
# its epoch line (samples/s) is in steps.log.
step train-ml20m-neumf8 90 "$NCF" train --data "$work/ml20m" --device "$device" --test-negatives 999 \
  --batch "$huge" --lr-scaling sqrt --epochs 1 --metrics-jsonl "$work/ml20m-neumf8.jsonl" --force

# ---- 7. compute-sanitizer memcheck on a short run
san="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [ $dry = 0 ] && have "$san"; then
  step memcheck 90 "$san" --tool memcheck --error-exitcode 1 "$NCF" train --data "$work/small" --device cuda \
    --epochs 1 --batch 256
else
  skip memcheck "compute-sanitizer not run (dry run or not installed)"
fi

# ---- 8. registers and shared memory of every compiled kernel
if have cuobjdump && compgen -G "$NCF_KERNEL_CACHE/*.cubin" >/dev/null; then
  step res-usage 30 sh -c "for f in '$NCF_KERNEL_CACHE'/*.cubin; do echo \"# \$f\"; cuobjdump -res-usage \"\$f\"; done > '$OUT/res-usage.txt' 2>&1"
else
  echo "cuobjdump: not run (not installed, or no kernel was compiled)" > "$OUT/res-usage.txt"
  skip res-usage "cuobjdump not installed, or no kernel compiled"
fi

# ---- summary.json
commit="$(head -1 "$B/MANIFEST" 2>/dev/null | cut -d' ' -f2- || true)"
[ -n "$commit" ] || commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
"$PY" - "$work/steps.tsv" "$OUT/summary.json" "$commit" "$dry" "$device" "$OUT/nvidia-smi.txt" <<'PY'
import json, sys
rows, out, commit, dry, device, smi = sys.argv[1:]
steps = []
for line in open(rows):
    name, rc, secs, note = (line.rstrip("\n").split("\t") + [""])[:4]
    steps.append({"name": name, "exit": int(rc) if rc.lstrip("-").isdigit() else rc,
                  "seconds": round(float(secs or 0), 2), "note": note})
gpu = open(smi).read().strip().splitlines()[-1] if open(smi).read().strip() else ""
json.dump({"commit": commit, "dry_run": dry == "1", "device": device, "gpu": gpu, "steps": steps,
           "failed": [s["name"] for s in steps if s["exit"] not in (0, "skipped")]}, open(out, "w"), indent=1)
PY
echo "gpu-check: wrote $(ls "$OUT" | wc -l) files to $OUT"
python3 -c "import json,sys; f=json.load(open(sys.argv[1]))['failed']; print('gpu-check: failed steps:', f or 'none'); sys.exit(1 if f else 0)" "$OUT/summary.json"
