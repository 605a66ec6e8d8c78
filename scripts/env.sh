# Sourced by the scripts: cargo's target dir lives outside the clone so rebuilds are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lancer-target}"
export LANCER_PYTHON="${LANCER_PYTHON:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python}"
