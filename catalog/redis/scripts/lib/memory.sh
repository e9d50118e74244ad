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
  # "max" or a huge number means unlimited.
  if [[ "$v" =~ ^[0-9]+$ ]] && (( ${#v} < 16 )); then printf '%s' "$v"; fi
}
