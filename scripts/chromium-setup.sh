#!/usr/bin/env bash
# Headless Chromium for tests/integration/test_dashboard.py (Playwright drives it; no `playwright install`).
# Idempotent: does nothing when `chromium` is already on PATH; otherwise installs Debian's
# `chromium` package and a font with the glyphs French labels need (root, or sudo).
# Prints the browser's path on stdout last; progress goes to stderr.
set -euo pipefail

log() { echo "chromium-setup: $*" >&2; }
source "$(dirname "$0")/lib.sh"

if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium fonts-dejavu-core
fi

# Debian's wrapper script may print shell noise on stderr; only its version line matters.
log "$(chromium --version 2>/dev/null | head -n 1)"
command -v chromium
