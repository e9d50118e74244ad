# shellcheck shell=bash
# memory_limit_bytes : the container's memory limit in bytes (cgroup v2 or v1),
# or nothing when there is none.
memory_limit_bytes() {
  local v=""
  if [[ -r /sys/fs/cgroup/memory.max ]]; then
    v="$(< /sys/fs/cgroup/memory.max)"
  elif [[ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
    v="$(< /sys/fs/cgroup/memory/memory.limit_in_bytes)"
  fi
  # "max" (v2) or a huge number (v1: 9223372036854771712) means unlimited. The
  # length decides, so no arithmetic on a value that might overflow 64 bits.
  if [[ "$v" =~ ^[0-9]+$ ]] && (( ${#v} < 16 )); then printf '%s' "$v"; fi
}
