#!/bin/sh
# Tools the deployment tests use: promtool and a Prometheus server, and kubectl (for
# `kubectl kustomize`). Installs nothing that runs: Prometheus comes from Debian's package,
# unpacked into tools/ in this checkout (installing the package would enable a system
# Prometheus service listening on :9090); kubectl from Debian's kubernetes-client (a client
# only). As root with apt-get they are fetched when missing; otherwise the tests that need them
# are skipped, each saying which tool is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tools="$(dirname "$here")/tools"
need_prometheus=0
command -v promtool >/dev/null 2>&1 || [ -x "$tools/bin/promtool" ] || need_prometheus=1
need_kubectl=0
command -v kubectl >/dev/null 2>&1 || need_kubectl=1
[ "$need_prometheus$need_kubectl" != "00" ] || exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: deployment tests skip what needs promtool/prometheus or kubectl (as root with apt-get this script fetches them)" >&2
    exit 0
fi
apt-get update -qq
if [ "$need_prometheus" = 1 ]; then
    echo "Fetching Debian's prometheus package into $tools (not installed as a service)"
    scratch=$(mktemp -d)
    chmod a+rwx "$scratch"  # apt downloads as its own user
    (cd "$scratch" && apt-get download -qq prometheus)
    dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/root"
    mkdir -p "$tools/bin"
    cp "$scratch/root/usr/bin/prometheus" "$scratch/root/usr/bin/promtool" "$tools/bin/"
    rm -rf "$scratch"
fi
if [ "$need_kubectl" = 1 ]; then
    echo "Installing kubernetes-client (kubectl)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client
fi
