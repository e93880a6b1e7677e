#!/usr/bin/env bash
# Fetch the S3A jars (hadoop-aws + the AWS SDK v2 modules it needs) listed in spark/jars/pom.xml
# into a cache folder outside git, with Maven. Idempotent: does nothing while the folder
# matches the pom. Folder: $ENERGY_PIPELINE_JARS_DIR, default ~/.cache/energy-pipeline/jars.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/spark/jars/pom.xml"
dest="${ENERGY_PIPELINE_JARS_DIR:-$HOME/.cache/energy-pipeline/jars}"
stamp="$dest/.pom.sha256"
want="$(sha256sum "$pom" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && compgen -G "$dest/hadoop-aws-*.jar" >/dev/null; then
    echo "S3A jars up to date ($(ls "$dest"/*.jar | wc -l) jars) in:" >&2
    echo "$dest"
    exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
    echo "error: Maven (mvn) is needed to fetch the S3A jars: apt-get install -y maven" >&2
    exit 1
fi

mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$dest.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching S3A jars with Maven (spark/jars/pom.xml) ..." >&2
mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2
if ! compgen -G "$tmp/hadoop-aws-*.jar" >/dev/null; then
    echo "error: Maven copied no hadoop-aws jar into $tmp" >&2
    exit 1
fi
echo "$want" >"$tmp/.pom.sha256"
chmod 755 "$tmp"

# Swap the folder in whole: a reader never sees a half-filled one, stale jars go away.
old="$dest.old.$$"
if [[ -e "$dest" ]]; then mv "$dest" "$old"; fi
mv "$tmp" "$dest"
trap - EXIT
rm -rf "$old"
echo "S3A jars: $(ls "$dest"/*.jar | wc -l) jars, $(du -sh "$dest" | cut -f1) in:" >&2
echo "$dest"
