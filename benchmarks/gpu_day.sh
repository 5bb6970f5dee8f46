#!/bin/sh
# The day a GPU is lent: run `python -m benchmarks.run --gpu` on a machine that has PyTorch with
# CUDA 13 but no onnxruntime-gpu, no internet, and takes at most 64 MiB of files per call.
#
#   sh benchmarks/gpu_day.sh prepare    # here (with internet): every wheel the benchmark needs,
#                                       # for CPython 3.12, as one tarball cut into <= 56 MiB
#                                       # parts under .gpu/parts/ (gitignored)
#   sh benchmarks/gpu_day.sh receive    # there, once per part, each call carrying the next part
#                                       # (carry: [".gpu/parts/part-NN"]) to the same warm machine;
#                                       # the parts accumulate (ignored paths stay between calls)
#   sh benchmarks/gpu_day.sh bench      # there: join, install into a venv that sees the system's
#                                       # PyTorch (its CUDA and cuDNN libraries), run the GPU
#                                       # suite, write $OUT/BENCHMARKS-gpu.md
#
# ORT_GPU_VERSION picks the onnxruntime-gpu build (default 1.31.1, CUDA 13). Sized so that the
# parts and the bench fit one lease: about 7 calls of carrying, then the bench (< 5 minutes, an
# estimate until it has run).
set -eu
cd "$(dirname "$0")/.."
gpu_dir=.gpu
version=${ORT_GPU_VERSION:-1.31.1}
part_bytes=$((56 * 1024 * 1024))  # + the working tree (~2 MiB) under the 64 MiB a call carries
# photofield-ai's dependencies with the GPU build of ONNX Runtime, less PyTurboJPEG (below).
binary_deps="onnxruntime-gpu==$version starlette python-multipart uvicorn httptools uvloop numpy
    Pillow opencv-python-headless pillow-heif anyio huggingface-hub prometheus-client ftfy regex
    onnx"

prepare() {
    rm -rf "$gpu_dir/wheels" "$gpu_dir/parts"
    mkdir -p "$gpu_dir/wheels" "$gpu_dir/parts"
    # PyTurboJPEG 1.x is published as an sdist only: build its (pure Python) wheel here.
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$gpu_dir/wheels" . "PyTurboJPEG>=1.7,<2"
    # The runtime dependencies, the model generator's and what the benchmark client needs,
    # as binary wheels for the device's Python (numpy comes with PyTorch there, but a matching
    # one is taken along in case).
    python3 -m pip download --quiet --dest "$gpu_dir/wheels" --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any \
        $binary_deps onnxconverter-common httpx pyyaml
    # libturbojpeg itself (PyTurboJPEG's C library) from this machine, in case the device has
    # none; without it decoding falls back to Pillow and the numbers say less.
    turbo=$(ldconfig -p | awk '/libturbojpeg\.so\.0 .*x86-64/ {print $NF; exit}')
    if [ -n "$turbo" ]; then
        mkdir -p "$gpu_dir/wheels/lib" && cp -L "$turbo" "$gpu_dir/wheels/lib/"
    fi
    tar -C "$gpu_dir" -cf "$gpu_dir/wheels.tar" wheels
    split -b "$part_bytes" -d -a 2 "$gpu_dir/wheels.tar" "$gpu_dir/parts/part-"
    rm "$gpu_dir/wheels.tar"
    (cd "$gpu_dir/parts" && sha256sum part-* > SHA256SUMS)
    ls -l "$gpu_dir/parts"
    echo "carry each part in its own call (plus .gpu/parts/SHA256SUMS with the first)"
}

receive() {
    ls -l "$gpu_dir/parts" 2>/dev/null || echo "no parts yet"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
}

bench() {
    (cd "$gpu_dir/parts" && sha256sum -c SHA256SUMS)
    cat "$gpu_dir"/parts/part-* | tar -C "$gpu_dir" -xf -
    python3 -m venv --system-site-packages "$gpu_dir/venv"
    # photofield-ai without its dependencies, which name the CPU onnxruntime: only one of the
    # two may be installed, and here it is the GPU build.
    "$gpu_dir/venv/bin/pip" install --quiet --no-index --find-links "$gpu_dir/wheels" \
        --no-deps photofield-ai
    "$gpu_dir/venv/bin/pip" install --quiet --no-index --find-links "$gpu_dir/wheels" \
        $binary_deps PyTurboJPEG onnxconverter-common httpx pyyaml
    # ONNX Runtime finds CUDA and cuDNN in the nvidia-* wheels PyTorch brought along.
    libs=$("$gpu_dir/venv/bin/python" - <<'EOF'
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(base, "torch", "lib"))
print(":".join(dirs))
EOF
)
    export LD_LIBRARY_PATH="$libs:$PWD/$gpu_dir/wheels/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$gpu_dir/venv/bin/python" -c \
        "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    "$gpu_dir/venv/bin/python" -c "from photofield_ai.imaging.decode import turbojpeg_available as t; \
print('libjpeg-turbo:', t())"
    out=${OUT:-.}
    "$gpu_dir/venv/bin/python" -m benchmarks.run --gpu --workdir "$gpu_dir/bench" \
        --out "$out/BENCHMARKS-gpu.md"
}

case "${1:-}" in
    prepare) prepare ;;
    receive) receive ;;
    bench) bench ;;
    *) echo "usage: $0 prepare|receive|bench" >&2; exit 2 ;;
esac
