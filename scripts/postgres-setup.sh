#!/usr/bin/env bash
# PostgreSQL server binaries for the deployment tests (tests/support/postgres.py starts a
# throwaway cluster of its own on loopback; nothing here starts or configures a server).
# Idempotent and quiet: does nothing when `initdb` is found (on PATH or in Debian's
# /usr/lib/postgresql/<version>/bin); otherwise installs Debian's `postgresql` package
# (root, or sudo) and stops the `main` cluster the package may have started.
# Prints the folder holding initdb and pg_ctl on stdout last; progress goes to stderr.
set -euo pipefail

log() { echo "postgres-setup: $*" >&2; }
source "$(dirname "$0")/lib.sh"

bindir() {
    local found
    found="$(command -v initdb 2>/dev/null || true)"
    if [[ -z "$found" ]]; then
        found="$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    [[ -n "$found" ]] && dirname "$(readlink -f "$found")"
}

if ! dir="$(bindir)"; then
    apt_install postgresql
    # The package creates a `main` cluster and may start it: the tests never use it.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _ status _; do
            if [[ "$status" == online* ]]; then
                log "stopping the package's cluster $version/$cluster"
                pg_ctlcluster "$version" "$cluster" stop >&2 || true
            fi
        done
    fi
    if ! dir="$(bindir)"; then
        log "error: postgresql installed but no initdb found"
        exit 1
    fi
fi

log "$("$dir/initdb" --version)"
echo "$dir"
