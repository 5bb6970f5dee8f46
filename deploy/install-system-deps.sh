#!/bin/sh
# Installs the system library photofield-ai needs besides Python packages: libjpeg-turbo's
# TurboJPEG API (libturbojpeg), which PyTurboJPEG loads at run time for fast JPEG decoding.
# Used by `make setup`, CI and the container images, so the steps are the same everywhere.
# As root on Debian/Ubuntu it installs the package; elsewhere it prints the command to run.
set -eu

if ldconfig -p 2>/dev/null | grep -q 'libturbojpeg\.so'; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing libturbojpeg0 (libjpeg-turbo) with apt-get..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libturbojpeg0
    exit 0
fi
echo "photofield-ai needs libjpeg-turbo's TurboJPEG library (libturbojpeg). Install it with:" >&2
if command -v apt-get >/dev/null 2>&1; then
    echo "    sudo apt-get install libturbojpeg0" >&2
elif command -v dnf >/dev/null 2>&1; then
    echo "    sudo dnf install turbojpeg" >&2
elif command -v brew >/dev/null 2>&1; then
    echo "    brew install jpeg-turbo" >&2
else
    echo "    your system's libjpeg-turbo package (the one providing libturbojpeg.so)" >&2
fi
exit 1
