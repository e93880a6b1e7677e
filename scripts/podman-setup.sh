#!/usr/bin/env bash
# Podman as a Docker engine stand-in on a Debian bookworm host without one (root).
# Idempotent and fast when already done:
#   1. apt-get install podman + runc + helpers + debootstrap (skipped when present)
#   2. /etc/containers/containers.conf: runtime runc, default ulimits from `ulimit -Hn`
#   3. the local base image localhost/debian-base:bookworm (debootstrap minbase + podman
#      import), since no image registry is reachable (skipped when the image exists)
#   4. `podman system service` on a Docker-compatible socket (skipped when it answers)
# Prints `DOCKER_HOST=unix://<socket>` on stdout last; progress goes to stderr.
#
# Settings (environment):
#   SOCK          socket path (default /run/energy-pipeline/podman.sock)
#   BASE_IMAGE    local base image name (default localhost/debian-base:bookworm)
#   DEBIAN_MIRROR debootstrap mirror (default: the first http(s) deb.debian.org-style URI
#                 found in /etc/apt/sources.list(.d), else http://deb.debian.org/debian)
set -euo pipefail

SOCK="${SOCK:-/run/energy-pipeline/podman.sock}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-base:bookworm}"
SUITE="${SUITE:-bookworm}"

log() { echo "podman-setup: $*" >&2; }

if [[ "$(id -u)" -ne 0 ]]; then
    echo "podman-setup: error: must run as root (apt-get, /etc/containers, rootful podman)" >&2
    exit 1
fi

# --- 1. packages ---------------------------------------------------------------------
pkgs=(podman runc conmon containernetworking-plugins golang-github-containernetworking-plugin-dnsname
      iptables catatonit uidmap slirp4netns fuse-overlayfs debootstrap)
missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || log "warning: apt-get update failed, trying the cached lists"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
    log "packages present"
fi

# --- 2. containers.conf --------------------------------------------------------------
hard_nofile="$(ulimit -Hn)"
if [[ "$hard_nofile" == "unlimited" ]]; then hard_nofile=1048576; fi
conf=/etc/containers/containers.conf
want_conf="# Written by scripts/podman-setup.sh (energy-pipeline).
# crun fails on this host's hybrid cgroups: use runc. The default nofile limits cannot be
# raised here, so containers get the host's hard limit.
[containers]
default_ulimits = [
  \"nofile=${hard_nofile}:${hard_nofile}\",
  \"nproc=32768:32768\",
]

[engine]
runtime = \"runc\"
"
mkdir -p /etc/containers
if [[ ! -f "$conf" ]] || [[ "$(cat "$conf")" != "$(printf '%s' "$want_conf")" ]]; then
    log "writing $conf (runc, nofile=$hard_nofile)"
    printf '%s' "$want_conf" >"$conf"
fi

# --- 3. local base image -------------------------------------------------------------
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        # deb822 "URIs:" lines and one-line "deb URI suite" entries; a Debian archive
        # (not -security, not third-party repos) that carries the suite.
        uri="$(grep -hE '^\s*(URIs:|deb\s)' "$f" 2>/dev/null \
            | sed -E 's/^\s*URIs:\s*//; s/^\s*deb\s+(\[[^]]*\]\s+)?//' | awk '{print $1}' \
            | grep -E '^https?://.*/debian/?$' | grep -v security | head -n1 || true)"
        if [[ -n "$uri" ]]; then echo "${uri%/}"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE present"
else
    mirror="${DEBIAN_MIRROR:-$(find_mirror)}"
    log "building $BASE_IMAGE with debootstrap --variant=minbase $SUITE from $mirror"
    work="$(mktemp -d /var/tmp/debian-base.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        echo "podman-setup: error: debootstrap failed (mirror $mirror)" >&2
        exit 1
    }
    # Same sources inside the image as on the host mirror; slim the image like the
    # official bookworm-slim (no apt lists, no caches).
    cat >"$work/rootfs/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${mirror%/debian}/debian-security $SUITE-security main
EOF
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
        "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/log/"*.log
    tar -C "$work/rootfs" --numeric-owner -c . \
        | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >&2
    rm -rf "$work"
    trap - EXIT
    log "base image $BASE_IMAGE built"
fi

# --- 4. Docker-compatible API socket ---------------------------------------------------
# A local image registry for the Docker-pool deployment test (`prefect deploy` pushes there):
# CNCF Distribution built from the Go module proxy (about 3 min once, then cached), and an
# insecure (plain HTTP) entry for its loopback address, read by the Podman service at start.
REGISTRY_ADDR="${REGISTRY_ADDR:-127.0.0.1:5055}"
REGISTRY_VERSION="${REGISTRY_VERSION:-v3.0.0}"
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/energy-pipeline/tools"
if [[ -x "$TOOLS/registry-$REGISTRY_VERSION" ]]; then
    log "registry $REGISTRY_VERSION present"
else
    command -v go >/dev/null || { echo "podman-setup: error: go is needed to build the registry" >&2; exit 1; }
    log "building the registry $REGISTRY_VERSION with go install"
    mkdir -p "$TOOLS"
    gobin="$(mktemp -d)"
    GOBIN="$gobin" GOFLAGS=-mod=mod go install \
        "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" >&2
    mv "$gobin/registry" "$TOOLS/registry-$REGISTRY_VERSION"
    rm -rf "$gobin"
fi
registries=/etc/containers/registries.conf.d/50-energy-pipeline-test.conf
want_registries="# Written by scripts/podman-setup.sh: the test registry speaks plain HTTP on loopback.
[[registry]]
location = \"$REGISTRY_ADDR\"
insecure = true
"
restart_service=0
mkdir -p "$(dirname "$registries")"
if [[ ! -f "$registries" ]] || [[ "$(cat "$registries")" != "$(printf '%s' "$want_registries")" ]]; then
    log "writing $registries"
    printf '%s' "$want_registries" >"$registries"
    restart_service=1
fi

sock_ok() {
    [[ -S "$SOCK" ]] && curl -fsS --max-time 3 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1
}
if sock_ok && ((restart_service)); then
    log "restarting the podman system service (registries changed)"
    pkill -f "podman system service --time=0 unix://$SOCK" || true
    for _ in $(seq 1 50); do sock_ok || break; sleep 0.2; done
fi
if sock_ok; then
    log "podman system service answers on $SOCK"
else
    mkdir -p "$(dirname "$SOCK")"
    rm -f "$SOCK"
    logfile="$(dirname "$SOCK")/podman-service.log"
    log "starting podman system service on $SOCK (log: $logfile)"
    setsid nohup podman system service --time=0 "unix://$SOCK" >"$logfile" 2>&1 </dev/null &
    for _ in $(seq 1 50); do
        if sock_ok; then break; fi
        sleep 0.2
    done
    if ! sock_ok; then
        tail -n 20 "$logfile" >&2 || true
        echo "podman-setup: error: podman system service did not answer on $SOCK" >&2
        exit 1
    fi
fi
echo "DOCKER_HOST=unix://$SOCK"
echo "REGISTRY=$TOOLS/registry-$REGISTRY_VERSION $REGISTRY_ADDR"
