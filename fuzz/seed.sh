#!/usr/bin/env bash
# Builds the fuzz targets' seed corpora under fuzz/corpus/TARGET/ from real files: the project's
# own sample (data/sample), files that `ncf` itself writes (a split, id maps, checkpoints of
# each model kind), and, when NCF_DATA names the shared MovieLens data, the first lines of each
# real file. The corpus holds excerpts of licensed data, so it is git-ignored: never commit it.
# Usage: fuzz/seed.sh [NCF_BINARY]   (default: target/release/ncf, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
NCF="${1:-target/release/ncf}"
[ -x "$NCF" ] || cargo build --release --quiet
C=fuzz/corpus
rm -rf "$C"
mkdir -p "$C"/{ratings,item_meta,users,ncf_split,id_map,config,checkpoint,serve}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One seed: TARGET NAME SELECTOR-BYTE-OR-EMPTY FILE [LINES]
seed() {
  local target=$1 name=$2 sel=$3 file=$4 lines=${5:-40}
  [ -f "$file" ] || return 0
  { [ -n "$sel" ] && printf "\\x$sel"; head -n "$lines" "$file"; } > "$C/$target/$name"
}

S=data/sample
seed ratings sample-dat 00 "$S/ratings.dat"
seed item_meta sample-dat 00 "$S/movies.dat"
seed users sample-dat 00 "$S/users.dat"

# Files ncf writes: a synthetic MovieLens folder, its NCF split with id maps, checkpoints.
"$NCF" data synth --out "$work/ml" --users 40 --items 30 --density 0.2 --seed 3 >/dev/null
"$NCF" data split --input "$work/ml" --out "$work/split" --name toy --negatives 5 >/dev/null 2>&1
seed ratings synth-dat 00 "$work/ml/ratings.dat" 60
seed item_meta synth-dat 00 "$work/ml/movies.dat"
seed users synth-dat 00 "$work/ml/users.dat"
seed id_map synth-items "" "$work/split/toy.item_ids.tsv"
seed id_map synth-users "" "$work/split/toy.user_ids.tsv"
for f in train.rating test.rating test.negative user_ids.tsv item_ids.tsv; do
  cat "$work/split/toy.$f"; printf '\0'
done > "$C/ncf_split/synth-full"
for f in train.rating test.rating test.negative; do
  cat "$work/split/toy.$f"; printf '\0'
done > "$C/ncf_split/synth-bare"
for m in neumf gmf mlp mf; do
  "$NCF" train --data "$work/split" --model "$m" --factors 4 --layers 8,4 --epochs 1 --batch 64 \
    --save "$work/$m.safetensors" >/dev/null 2>&1
  cp "$work/$m.safetensors" "$C/checkpoint/$m"
done

# Configs: every kind of value a run.toml holds.
printf 'model = "gmf"\nfactors = 16\nlr = 0.01\nbatch = 512\nepochs = 3\n' > "$C/config/basic"
printf 'preset = "fast"\nepochs = 5\nseed = 7\n' > "$C/config/preset"
printf 'model = "neumf"\nlayers = [64, 32, 16, 8]\noptimizer = "sgd"\nlr-schedule = "plateau"\nneg = 4\nstep = "reference"\ngraph = false\npretrain-gmf = "g.st"\n' > "$C/config/neumf"

# HTTP requests to `ncf serve` (users 1..=20, items 100..=114 in the target's model).
req() { printf '%s' "$2" > "$C/serve/$1"; }
req health $'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'
req recs $'GET /users/3/recommendations?k=5 HTTP/1.1\r\nHost: x\r\n\r\n'
req unknown-user $'GET /users/99999/recommendations HTTP/1.1\r\nHost: x\r\n\r\n'
req similar $'GET /items/104/similar?k=3 HTTP/1.1\r\nHost: x\r\n\r\n'
post() { printf 'POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "$2" "${#3}" "$3" > "$C/serve/$1"; }
post score /score '{"pairs":[[1,100],[2,101]]}'
post fold-in /users/recommendations '{"items":[100,105],"k":3}'
req chunked $'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{"pairs"\r\n9\r\n:[[1,100]\r\n2\r\n]}\r\n0\r\n\r\n'
req two $'GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n'

# Real data, when present: the first lines of each file.
if [ -n "${NCF_DATA:-}" ] && [ -d "$NCF_DATA" ]; then
  D="$NCF_DATA"
  seed ratings ml1m-dat 00 "$D/ncf-ml-1m/ratings.dat"
  seed ratings ml100k-data 01 "$D/ml-100k/u.data"
  seed ratings latest-csv 02 "$D/ml-latest-small/ratings.csv"
  seed item_meta ml1m-dat 00 "$D/ml-1m/movies.dat"
  seed item_meta ml100k-item 01 "$D/ml-100k/u.item"
  seed item_meta latest-csv 02 "$D/ml-latest-small/movies.csv"
  seed users ml1m-dat 00 "$D/ml-1m/users.dat"
  seed users ml100k-user 01 "$D/ml-100k/u.user"
  seed id_map ml1m-items "" "$D/ncf-ml-1m/item_id_map.tsv"
  N="$D/ncf-ml-1m/ml-1m"
  { head -n 60 "$N.train.rating"; printf '\0'; head -n 3 "$N.test.rating"; printf '\0'; head -n 3 "$N.test.negative"; printf '\0'; } \
    > "$C/ncf_split/ml1m-head"
fi
for t in "$C"/*; do echo "$(basename "$t"): $(ls "$t" | wc -l) seeds"; done
