#!/usr/bin/env bash
# Headless Chromium for tests/integration/test_dashboard.py (Playwright drives it; no `playwright install`).
# Idempotent: does nothing when `chromium` is already on PATH; otherwise installs Debian's
# `chromium` package and a font with the glyphs French labels need (root, or sudo).
# Prints the browser's path on stdout last; progress goes to stderr.
set -euo pipefail

log() { echo "chromium-setup: $*" >&2; }

if ! command -v chromium >/dev/null 2>&1; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            log "error: chromium is missing and installing it needs root (or sudo)"
            exit 1
        fi
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "installing chromium fonts-dejavu-core"
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" apt-get install -y -q chromium fonts-dejavu-core >&2
fi

# Debian's wrapper script may print shell noise on stderr; only its version line matters.
log "$(chromium --version 2>/dev/null | head -n 1)"
command -v chromium
