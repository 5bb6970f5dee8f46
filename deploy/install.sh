#!/bin/sh
# The one install procedure, shared by `make setup`, CI and both container images:
#   deploy/install.sh [--gpu] [--dev] VENV
# 1. the system library (libjpeg-turbo's TurboJPEG) via install-system-deps.sh;
# 2. a virtual environment at VENV with photofield-ai installed (editable with --dev, plus the
#    development tools); with --gpu, ONNX Runtime's CUDA build replaces the CPU one (both
#    provide the `onnxruntime` module, so only one may be installed).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
gpu=0
dev=0
while [ $# -gt 1 ]; do
    case "$1" in
        --gpu) gpu=1 ;;
        --dev) dev=1 ;;
        *) echo "usage: $0 [--gpu] [--dev] VENV" >&2; exit 2 ;;
    esac
    shift
done
[ $# -eq 1 ] || { echo "usage: $0 [--gpu] [--dev] VENV" >&2; exit 2; }
venv=$1
python=${PYTHON:-python3}

sh "$here/install-system-deps.sh"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ "$dev" = 1 ]; then
    "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
else
    "$venv/bin/python" -m pip install --quiet --no-cache-dir "$root"
fi
if [ "$gpu" = 1 ]; then
    "$venv/bin/python" -m pip uninstall --quiet -y onnxruntime
    "$venv/bin/python" -m pip install --quiet --no-cache-dir "onnxruntime-gpu>=1.17"
fi
"$venv/bin/photofield-ai" --version
