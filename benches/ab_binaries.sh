#!/usr/bin/env bash
# Interleaved A/B of two `ncf` binaries (e.g. before and after a refactor): NeuMF-8 on the NCF
# ML-1M split, 2 epochs per run, batches 256 and 4096, the order alternating every round so that
# a slow stretch of the machine hits both. Prints one line per run (binary, batch, samples/s of
# each epoch), then the medians and their ratio.
#   usage: benches/ab_binaries.sh OLD_NCF NEW_NCF [ROUNDS]   (needs NCF_DATA)
set -euo pipefail
old=$1 new=$2 rounds=${3:-6}
data="${NCF_DATA:?set NCF_DATA to the folder holding ncf-ml-1m}/ncf-ml-1m"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for bs in 256 4096; do
    if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for w in $order; do
      bin=$old; [ "$w" = new ] && bin=$new
      "$bin" train --data "$data" --epochs 2 --batch "$bs" --metrics-jsonl "$out/m.jsonl" --force >/dev/null
      python3 -c "import json,sys;print('$w', $bs, *('%.0f' % json.loads(l)['samples_per_second'] for l in open(sys.argv[1])))" "$out/m.jsonl" | tee -a "$out/runs.txt"
    done
  done
done
python3 - "$out/runs.txt" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w, bs, *v = line.split()
    d[(w, bs)] += [float(x) for x in v]
for bs in ("256", "4096"):
    o, n = d[("old", bs)], d[("new", bs)]
    print(f"batch {bs}: old median {statistics.median(o):.0f} max {max(o):.0f}; new median {statistics.median(n):.0f} "
          f"max {max(n):.0f}; new/old median {statistics.median(n)/statistics.median(o):.3f} max {max(n)/max(o):.3f} "
          f"({len(o)} epochs each)")
PY
