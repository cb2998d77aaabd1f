#!/usr/bin/env bash
# Prepares, on a CPU machine, everything scripts/gpu-check.sh needs on a GPU machine that has no
# Rust and no network: fills the git-ignored folder .gpu/ (at most 60 MB) with
#   bin/ncf                  the stripped release binary
#   bin/parity, bin/checks   ncf-cuda's GPU tests (cargo test --no-run), stripped
#   bin/gpu-bench            benches/gpu.rs (cargo bench --no-run), stripped
#   data/ncf-ml-1m.tar.xz    the NCF ML-1M split from $NCF_DATA (licensed: never committed)
#   torch_ncf.py             the PyTorch reference
#   MANIFEST                 commit, build date, sizes
# Then runs `scripts/gpu-check.sh --dry-run` on the bundle, so a broken bundle is found here.
#   usage: NCF_DATA=../shared/data scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
rm -rf "$out"
mkdir -p "$out/bin" "$out/data"

cargo build --release --quiet
# The executables cargo builds for a target, from its JSON messages.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in sys.argv[1:]:
        print(m["target"]["name"], m["executable"])
' "$@"
}
cargo test --release -p ncf-cuda --test parity --test checks --no-run --message-format=json 2>/dev/null \
  | executables parity checks > "$out/tests.txt"
cargo bench --bench gpu --no-run --message-format=json 2>/dev/null | executables gpu >> "$out/tests.txt"
strip_to() { objcopy --strip-debug --strip-unneeded "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
strip_to target/release/ncf "$out/bin/ncf"
while read -r name exe; do
  case $name in gpu) dest=gpu-bench ;; *) dest=$name ;; esac
  strip_to "$exe" "$out/bin/$dest"
done < "$out/tests.txt"
rm "$out/tests.txt"
for b in ncf parity checks gpu-bench; do
  [ -x "$out/bin/$b" ] || { echo "gpu-bundle: $out/bin/$b was not built" >&2; exit 1; }
done

if [ -n "${NCF_DATA:-}" ] && [ -d "$NCF_DATA/ncf-ml-1m" ]; then
  tar -C "$NCF_DATA" -cJf "$out/data/ncf-ml-1m.tar.xz" ncf-ml-1m
else
  echo "gpu-bundle: NCF_DATA/ncf-ml-1m not found; the check will train on a generated ML-1M-sized split" >&2
fi
cp benches/reference/torch_ncf.py "$out/"
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  (cd "$out" && find . -type f ! -name MANIFEST -printf '%s %p\n' | sort -k2)
} > "$out/MANIFEST"
size=$(du -sm "$out" | cut -f1)
echo "gpu-bundle: $out is ${size} MB"
cat "$out/MANIFEST"
if [ "$size" -gt 60 ]; then
  echo "gpu-bundle: $out is over 60 MB" >&2
  exit 1
fi
OUT="$(mktemp -d)" scripts/gpu-check.sh --dry-run
