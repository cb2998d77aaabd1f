#!/usr/bin/env bash
# ncf-rs vs PyTorch: builds the ncf binary, makes sure a venv with torch exists, then runs
# benches/compare.py with that venv's python. Arguments go to compare.py (see --help), e.g.
#   NCF_DATA=../shared/data benches/compare.sh --epochs 10 --threads 4
# Environment: TORCH_VENV (default ~/.cache/ncf-rs/torch-venv); TORCH_PIP_ARGS (default
# `torch`; e.g. "torch --index-url https://download.pytorch.org/whl/cpu" for the smaller CPU
# build); NCF_NO_BUILD=1 skips `cargo build`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${TORCH_VENV:-$HOME/.cache/ncf-rs/torch-venv}"
py="$venv/bin/python"

if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    echo "compare.sh: no torch in $venv; creating the venv and installing torch (a large download)" >&2
    python3 -m venv "$venv" || { echo "compare.sh: python3 -m venv $venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of words on purpose
    "$py" -m pip install --quiet ${TORCH_PIP_ARGS:-torch} || { echo "compare.sh: pip install ${TORCH_PIP_ARGS:-torch} failed" >&2; exit 1; }
    "$py" -c 'import torch' || { echo "compare.sh: torch installed in $venv but does not import" >&2; exit 1; }
fi

if [[ "${NCF_NO_BUILD:-0}" != 1 ]]; then
    (cd "$root" && cargo build --release --bin ncf) || { echo "compare.sh: cargo build --release --bin ncf failed" >&2; exit 1; }
fi

exec "$py" "$here/compare.py" --torch-python "$py" --ncf "$root/target/release/ncf" "$@"
