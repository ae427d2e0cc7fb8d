#!/usr/bin/env bash
# Build llama.cpp's llama-server from the sources PyPI's llama-cpp-python sdist vendors,
# into a folder outside the clone that a second run reuses (the build takes ~6 minutes
# on 2 cores; a reuse takes none). Then make the tiny deterministic model beside it.
#
#   deploy/real-engine/build.sh [PYTHON]
#
# PYTHON (default: python3) runs make_model.py and needs the `real-engine` extra
# (gguf, tokenizers, numpy). The folder is ${STREAMAPI_REAL_ENGINE_DIR:-~/.cache/streamapi-real-engine}:
#   bin/llama-server   the server
#   tiny.gguf          the model (2 layers, hidden size 64, random weights, byte-level BPE)
#   VERSION            the llama-cpp-python version whose vendored llama.cpp was built
# Nothing is downloaded but the sdist from PyPI (pip's ordinary client); no model hub.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python3}"
dest="${STREAMAPI_REAL_ENGINE_DIR:-$HOME/.cache/streamapi-real-engine}"
jobs="${STREAMAPI_REAL_ENGINE_JOBS:-2}"
mkdir -p "$dest"

if [ -x "$dest/bin/llama-server" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$LLAMA_CPP_PYTHON_VERSION" ]; then
    echo "real-engine: reusing $dest/bin/llama-server (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
else
    work="$dest/src"
    rm -rf "$work"
    mkdir -p "$work"
    # The sdist only (its vendored llama.cpp), with pip's ordinary client: PYTHON's own
    # pip, else pip3 (a venv made by uv has no pip).
    pip=("$python" -m pip)
    "$python" -m pip --version >/dev/null 2>&1 || pip=(pip3)
    "${pip[@]}" download --quiet --no-binary :all: --no-deps --dest "$work" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
    # No libcurl (the server never fetches a model), no -march=native (the binary is
    # reused on whatever CPU the cache lands), and only the one target we run.
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
        >"$work/cmake.log"
    cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log"
    mkdir -p "$dest/bin"
    cp "$work/build/bin/llama-server" "$dest/bin/llama-server"
    echo "$LLAMA_CPP_PYTHON_VERSION" >"$dest/VERSION"
    rm -rf "$work"
    echo "real-engine: built $dest/bin/llama-server (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
fi

# The model is made every time (seconds, deterministic), so a change to make_model.py
# shows at once without a stale cache.
"$python" "$here/make_model.py" "$dest/tiny.gguf"
