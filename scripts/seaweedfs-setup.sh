#!/usr/bin/env bash
# Build the SeaweedFS server binary (`weed`, Apache-2.0) once, for the S3 tests, and cache it.
# It comes from the Go module proxy: `go install ...@version` is refused (its go.mod has
# replace directives), so this runs `go build ./weed` in a writable copy of the module
# (go_build_module in scripts/lib.sh; about 7 minutes on 2 cores; binary about 230 MB).
# Idempotent: a cached binary that answers `weed version` is reused (seconds).
#
# Prints the binary's absolute path as the LAST line of stdout; progress goes to stderr.
#   ${ENERGY_PIPELINE_TOOLS_DIR:-$HOME/.cache/energy-pipeline/tools}/seaweedfs/<version>/weed
# Settings (environment):
#   ENERGY_PIPELINE_TOOLS_DIR  cache root (default ~/.cache/energy-pipeline/tools)
#   SEAWEEDFS_VERSION          Go module version (default pinned below)
set -euo pipefail

MODULE=github.com/seaweedfs/seaweedfs
VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
tools="${ENERGY_PIPELINE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/energy-pipeline/tools}"
dest_dir="$tools/seaweedfs/$VERSION"
bin="$dest_dir/weed"

log() { echo "seaweedfs-setup: $*" >&2; }
source "$(dirname "$0")/lib.sh"

if [[ -x "$bin" ]] && "$bin" version >/dev/null 2>&1; then
    log "cached: $("$bin" version 2>/dev/null | head -n1)"
    echo "$bin"
    exit 0
fi

start=$SECONDS
go_build_module "$MODULE" "$VERSION" ./weed "$bin" -ldflags "-s -w"
"$bin" version >/dev/null
log "built in $((SECONDS - start)) s: $(du -h "$bin" | cut -f1) $("$bin" version | head -n1)"
echo "$bin"
