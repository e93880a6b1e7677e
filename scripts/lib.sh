# Shared by the setup scripts (source it; each script defines `log` first).

# apt_install PACKAGE...: Debian packages, as root or through sudo; progress to stderr.
apt_install() {
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            log "error: installing $* needs root (or sudo)"
            return 1
        fi
        sudo=(sudo)
    fi
    log "installing $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

# go_build_module MODULE VERSION PACKAGE OUTPUT [go build flags...]: build PACKAGE (relative to
# the module's root, e.g. ./cmd) of MODULE@VERSION from the Go module proxy into OUTPUT,
# atomically. `go install MODULE/PACKAGE@VERSION` is refused for modules whose go.mod has
# replace or exclude directives, so this builds inside a writable copy of the module, as
# their own Makefiles do. Static (CGO off), stripped, reproducible paths.
go_build_module() (
    set -euo pipefail
    module="$1" version="$2" package="$3" output="$4"
    shift 4
    command -v go >/dev/null 2>&1 || { log "error: Go is needed to build $module@$version"; exit 1; }
    work="$(mktemp -d "${TMPDIR:-/tmp}/go-build.XXXXXX")"
    # The module cache copy is read-only: make it writable so rm can remove it.
    trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
    log "downloading $module@$version from the Go module proxy"
    dir="$(cd "$work" && go mod download -json "$module@$version" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        log "error: go mod download gave no module folder for $module@$version"
        exit 1
    fi
    cp -r "$dir" "$work/src"
    chmod -R u+w "$work/src"
    log "building $package of $module@$version (a few minutes on 2 cores)"
    (cd "$work/src" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" \
        go build -trimpath "$@" -o "$work/out" "$package") >&2
    mkdir -p "$(dirname "$output")"
    chmod 755 "$work/out"
    mv "$work/out" "$output.tmp.$$"
    mv -f "$output.tmp.$$" "$output"
)
