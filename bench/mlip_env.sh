#!/usr/bin/env bash
# Create .venv-mlip (git-ignored) with InstaDeep's mlip, the peer of bench/mlip_throughput.py
# and bench/mlip_train.py. It is a separate environment because mlip pins its own jax, flax,
# e3nn-jax and jax-md; jaxpot's environment is never touched.
#
#   bash bench/mlip_env.sh              # mlip 0.2.5 (the version measured in bench/README-mlip.md)
#   MLIP_VERSION=0.2.6 bash bench/mlip_env.sh
#   PYTHON=python3.11 bash bench/mlip_env.sh
#
# mlip 0.2.5 resolves to jax/jaxlib 0.10.2, flax 0.12.8, e3nn-jax 0.21.0, optax 0.2.8,
# jax-md 0.2.29 (CPU wheels; the same jax as jaxpot's environment at the time of writing).
set -euo pipefail
cd "$(dirname "$0")/.."
MLIP_VERSION="${MLIP_VERSION:-0.2.5}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-mlip}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "mlip==${MLIP_VERSION}"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import jax
print("mlip", md.version("mlip"), "| jax", jax.__version__, "| flax", md.version("flax"),
      "| e3nn-jax", md.version("e3nn-jax"), "| devices", jax.devices())
EOF
