#!/bin/sh
# System tools the deployment tests use: promtool and a Prometheus server (Debian's prometheus
# package) and kubectl (for `kubectl kustomize`). As root with apt-get they are installed when
# missing; otherwise the tests that need them are skipped, each saying which tool is missing.
set -eu
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v kubectl >/dev/null 2>&1 || missing="$missing kubernetes-client"
[ -n "$missing" ] || exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing test tools:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "note: deployment tests will be skipped without:$missing (apt-get install$missing)" >&2
fi
