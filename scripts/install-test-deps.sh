#!/usr/bin/env bash
# System packages the tests need: Debian's Chromium for the browser tests and
# PostgreSQL 15 for the store tests. Installed only when missing.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "Missing system packages: ${need[*]}. Install them with apt-get (as root)." >&2
        exit 1
    fi
    echo "Installing ${need[*]}…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
