#!/usr/bin/env bash
# Compiles the TypeScript sources into dist/ (npm run build), or only when they changed (npm start).
#
#   bash scripts/build.sh              compile (tsc -p .), then record what was compiled
#   bash scripts/build.sh --if-stale   compile only when the sources differ from what dist/ was compiled from
#   bash scripts/build.sh --check      print "fresh" (exit 0) or "stale" (exit 1); compiles nothing
#
# What was compiled is a fingerprint: a SHA-256 over the path and content of every file tsconfig.json includes,
# tsconfig.json itself, package.json, package-lock.json (the type packages) and this script, kept in
# dist/.build-fingerprint. Contents rather than modification times, so a reverted edit or a fresh clone is judged
# right and a deleted or renamed file counts as a change. Reading ~2 MB of sources takes tens of milliseconds; a
# full tsc run takes 5 s or more. A compile that fails records nothing, so the next start compiles again.
set -euo pipefail

root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$root"
stamp=dist/.build-fingerprint

fingerprint() {
  local include dirs
  # The top folders of tsconfig's include patterns ("src/**/*.ts" -> src): everything tsc may read from there. Read
  # with grep rather than node, whose start alone would take longer than the rest.
  include="$(tr -d '\n' <tsconfig.json | grep -o '"include"[[:space:]]*:[[:space:]]*\[[^]]*\]' || true)"
  dirs="$(grep -o '"[^"]*"' <<<"${include#*[}" | tr -d '"' | cut -d / -f 1 | sort -u || true)"
  if [[ -z "$dirs" ]]; then
    # No include list: tsc reads the whole folder. Never fresh, rather than hashing node_modules.
    echo "unknown-$RANDOM$RANDOM"
    return
  fi
  {
    # shellcheck disable=SC2086 # one folder per word, as printed above
    find $dirs -type f \( -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.tsx' -o -name '*.json' \) -print0 2>/dev/null
    printf '%s\0' tsconfig.json package.json package-lock.json scripts/build.sh
  } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d ' ' -f 1
}

is_fresh() {
  [[ -f "$stamp" && -f dist/src/main.js && "$(<"$stamp")" == "$1" ]]
}

mode="${1:-}"
case "$mode" in
  --check)
    if is_fresh "$(fingerprint)"; then
      echo fresh
    else
      echo stale
      exit 1
    fi
    ;;
  --if-stale | "")
    # Taken before compiling: a file saved while tsc runs makes the next start compile again.
    sources="$(fingerprint)"
    if [[ "$mode" == --if-stale ]] && is_fresh "$sources"; then
      echo "dist/ is up to date with the sources: not compiling" >&2
      exit 0
    fi
    [[ -x node_modules/.bin/tsc ]] || {
      echo "node_modules/.bin/tsc is missing: run npm ci first" >&2
      exit 1
    }
    rm -f "$stamp"
    node_modules/.bin/tsc -p .
    if [[ -f dist/src/cli/osb-docker.js ]]; then chmod +x dist/src/cli/osb-docker.js; fi
    printf '%s\n' "$sources" >"$stamp.tmp"
    mv -f "$stamp.tmp" "$stamp"
    ;;
  *)
    echo "usage: bash scripts/build.sh [--if-stale | --check]" >&2
    exit 2
    ;;
esac
