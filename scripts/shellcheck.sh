#!/usr/bin/env bash
# Runs shellcheck on every shell script of the project and exits non-zero on any finding.
#
# The scripts are the files under catalog/, scripts/, images/ and .ci/ (node_modules and dist excepted) whose name ends
# in .sh, whose first line is a sh/bash/dash/ksh shebang, or whose first line is a "# shellcheck shell=" directive
# (the sourced libraries). Lifecycle scripts have no extension, so the shebang is what counts.
#
# With --external-sources, shellcheck follows the libraries a script sources; the scripts name them with
# "shellcheck source=SCRIPTDIR/lib/common.sh" directives (relative to the script's own folder, where the scripts
# find them at run time), and --source-path=SCRIPTDIR resolves plain relative names the same way.
# Arguments are passed on to shellcheck (e.g. -f gcc). SHELLCHECK names another binary.
set -euo pipefail

root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$root"
shellcheck="${SHELLCHECK:-shellcheck}"
if ! command -v "$shellcheck" >/dev/null 2>&1; then
  printf 'shellcheck.sh: %s is not installed (Debian: apt-get install shellcheck)\n' "$shellcheck" >&2
  exit 2
fi

# is_shell FILE : succeeds when FILE is a shell script or a shell library.
is_shell() {
  local first=""
  [[ "$1" == *.sh ]] && return 0
  IFS= read -r first <"$1" || [[ -n "$first" ]] || return 1
  [[ "$first" =~ ^#!.*[/[:space:]](ba|da|k)?sh([[:space:]]|$) || "$first" =~ ^#[[:space:]]*shellcheck[[:space:]]+shell= ]]
}

files=()
while IFS= read -r -d '' file; do
  if is_shell "$file"; then files+=("$file"); fi
done < <(find catalog scripts images .ci \( -name node_modules -o -name dist \) -prune -o -type f -print0 | sort -z)

if (( ${#files[@]} == 0 )); then
  printf 'shellcheck.sh: no shell scripts found under %s\n' "$root" >&2
  exit 2
fi

rc=0
"$shellcheck" --external-sources --source-path=SCRIPTDIR "$@" -- "${files[@]}" || rc=$?
if (( rc == 0 )); then
  printf 'shellcheck.sh: %d shell scripts, no findings\n' "${#files[@]}" >&2
fi
exit "$rc"
