#!/usr/bin/env bash
# Installs what building and testing sluice needs beyond Rust, Java/Maven and Python, which the
# machines ship: librdkafka's build needs cmake and the curl headers; the compatibility checks
# need kcat and kafka-python; the network-partition tests need iproute2. Safe to run
# repeatedly; does nothing when all is present.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
# The network-partition tests run cluster nodes in network namespaces (ip netns).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import kafka' >/dev/null 2>&1; then
  echo "install-deps: pip install kafka-python"
  python3 -m pip install -q kafka-python
fi
