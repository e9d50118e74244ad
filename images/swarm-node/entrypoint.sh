#!/usr/bin/env bash
# Starts dockerd as one node of the Swarm test cluster (test/helpers/swarm-cluster.ts):
#   - API on the unix socket and on tcp :2375 without TLS. The node's address is on a bridge network of this machine,
#     so only this machine and the other nodes reach it. --tls=false says so explicitly: without it dockerd 20.10
#     waits 15 s at start to show a deprecation warning.
#   - overlay2 on /var/lib/docker, which must be a volume (overlay2 cannot stack on the container's overlay root);
#     naming the driver makes dockerd fail instead of falling back to the slow and large vfs.
#   - the node's containers in the cgroup /$OSB_NODE_CGROUP (default osb-swarm/<hostname>) of the host's cgroup tree
#     (mounted read-write at /sys/fs/cgroup): apart from the engine's own /docker and from the other nodes.
# Extra arguments go to dockerd.
set -euo pipefail

# A restarted node keeps its root filesystem: the pid files of the previous run would make dockerd and containerd
# refuse to start ("pid file found, ensure docker is not running").
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid /var/run/docker.sock

if [[ "$(stat -f -c %T /var/lib/docker)" == overlayfs ]]; then
  echo "osb-swarm-node: /var/lib/docker is on the container's overlay root; mount a volume there (overlay2 needs it)" >&2
  exit 1
fi

# The volume outlives the node container (it caches images): a new node container must not rejoin the Swarm of
# the one before it, whose half-left state also keeps the network agent from starting (overlay networks then have no
# name resolution). A restart of the same container keeps its Swarm membership: the marker is on the root filesystem.
if [[ ! -e /etc/osb-swarm-node.started ]]; then
  rm -rf /var/lib/docker/swarm /var/lib/docker/network
  touch /etc/osb-swarm-node.started
fi

cgroup="${OSB_NODE_CGROUP:-osb-swarm/$(hostname)}"
exec /usr/sbin/dockerd \
  --host=unix:///var/run/docker.sock \
  --host=tcp://0.0.0.0:2375 \
  --tls=false \
  --storage-driver=overlay2 \
  --cgroup-parent="/$cgroup" \
  "$@"
