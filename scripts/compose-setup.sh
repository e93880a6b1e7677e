#!/usr/bin/env bash
# Docker Compose (the real one, v5) as a docker CLI plugin, built from the Go module proxy.
# Idempotent: built once into the cache, then only (re)linked as the plugin.
#   1. `go build ./cmd` in a copy of github.com/docker/compose/v5@VERSION from the module proxy
#      (`go install ...@VERSION` is refused: its go.mod has exclude directives), into
#      $CACHE/energy-pipeline/tools/compose/VERSION/docker-compose (skipped when the cached
#      binary answers `version` with VERSION)
#   2. ~/.docker/cli-plugins/docker-compose -> that binary, so `docker compose ...` works with
#      the docker CLI (against Podman's Docker-compatible socket: DOCKER_HOST=unix://...)
# Prints the binary's absolute path on stdout last; progress goes to stderr.
#
# Settings (environment):
#   COMPOSE_VERSION   module version (default v5.6.0: builds with this machine's Go 1.26.8)
#   DOCKER_CONFIG     the docker CLI's config folder (default ~/.docker)
set -euo pipefail

COMPOSE_VERSION="${COMPOSE_VERSION:-v5.6.0}"
MODULE="github.com/docker/compose/v5"
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/energy-pipeline/tools"
BIN_DIR="$TOOLS/compose/$COMPOSE_VERSION"
BIN="$BIN_DIR/docker-compose"
PLUGINS="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

log() { echo "compose-setup: $*" >&2; }
source "$(dirname "$0")/lib.sh"

works() { [[ -x "$BIN" ]] && "$BIN" version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; }

if works; then
    log "docker-compose $COMPOSE_VERSION present ($BIN)"
else
    log "building docker-compose $COMPOSE_VERSION from the module source (a few minutes)"
    # Same version stamp as the Makefile's GO_LDFLAGS.
    go_build_module "$MODULE" "$COMPOSE_VERSION" ./cmd "$BIN" \
        -ldflags "-s -w -X $MODULE/internal.Version=$COMPOSE_VERSION"
    works || { echo "compose-setup: error: $BIN does not report $COMPOSE_VERSION" >&2; exit 1; }
fi

mkdir -p "$PLUGINS"
if [[ "$(readlink -f "$PLUGINS/docker-compose" 2>/dev/null)" != "$BIN" ]]; then
    log "installing the docker CLI plugin $PLUGINS/docker-compose"
    ln -sfn "$BIN" "$PLUGINS/docker-compose"
fi
echo "$BIN"
