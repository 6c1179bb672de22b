#!/usr/bin/env bash
# Install the system tools stacklab relies on (tshark, dumpcap, dig, ip, and a
# C compiler with Python's headers for the compiled hot path) when they are
# missing. Installs with apt-get when running as root on Debian or
# Ubuntu; otherwise prints exactly what to install.
set -euo pipefail

need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # headless check of the HTML report
# mypyc compiles the verifier's hot path (setup.py); without these it stays pure Python.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
python=${PYTHON:-python3}
if command -v "$python" >/dev/null 2>&1 && ! "$python" -c \
    'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    need+=(python3-dev)
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "stacklab: installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "stacklab: missing system packages: ${need[*]}" >&2
    echo "  install them with: sudo apt-get install ${need[*]}" >&2
    echo "  (tshark-based cross-checks are skipped until then)" >&2
fi
