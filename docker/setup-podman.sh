#!/bin/sh
# Podman for docker/compose.yaml on a Debian host (run as root), for machines without Docker or
# without a reachable container registry. `make compose-test SETUP_PODMAN=1` runs it when podman
# is missing. Idempotent; about 2-3 minutes on 2 cores the first time.
#
# Installs podman (Debian's, with runc) and podman-compose (from PyPI, in /opt/podman-compose-venv:
# Debian's older podman-compose mishandles some compose files), writes an engine config when the
# machine has none, and builds two local base images from Debian's archive (no registry needed):
#   localhost/local/debian:stable   debootstrap minbase, imported  (DEBIAN_IMAGE)
#   localhost/local/python:slim     the same + python3, pip, venv    (BASE_IMAGE)
# docker/compose_test.py uses these two when they exist.
set -eu

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SUITE=${SUITE:-stable}
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# 1. Packages.
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y podman runc debootstrap iptables python3-venv

# 2. podman-compose from PyPI.
if [ ! -x /opt/podman-compose-venv/bin/podman-compose ]; then
    python3 -m venv /opt/podman-compose-venv
    /opt/podman-compose-venv/bin/pip install -q podman-compose
fi
ln -sf /opt/podman-compose-venv/bin/podman-compose /usr/local/bin/podman-compose

# 3. Engine config, only when there is none. Root without CAP_SYS_RESOURCE cannot raise
#    RLIMIT_NOFILE to podman's default (1048576), so the container limits are pinned to the
#    machine's hard limit (compose files must then not set `ulimits:`, which would replace
#    these); crun refuses hybrid cgroup v1/v2 layouts, so runc; no systemd, so cgroupfs.
if [ ! -e /etc/containers/containers.conf ]; then
    NOFILE=$(ulimit -Hn)
    mkdir -p /etc/containers
    cat > /etc/containers/containers.conf <<EOF
[containers]
default_ulimits = ["nofile=${NOFILE}:${NOFILE}", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
fi

# 4. Local Debian base image.
if ! podman image exists localhost/local/debian:"$SUITE"; then
    debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR"
    rm -f "$WORK"/rootfs/var/cache/apt/archives/*.deb
    rm -rf "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | podman import - localhost/local/debian:"$SUITE"
    rm -rf "$WORK/rootfs"
fi

# 5. Python base standing in for python:3.X-slim. The host's extra CA certificates (a TLS-
#    inspecting proxy's, if any) are copied in so that pip in containers trusts what the host
#    trusts; the image is rebuilt when they change.
CAHASH=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)
HAVE=$(podman image inspect -f '{{index .Labels "local.cahash"}}' localhost/local/python:slim 2>/dev/null || true)
if [ "$HAVE" != "$CAHASH" ]; then
    mkdir -p "$WORK/pybase"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/pybase/" 2>/dev/null || true
    touch "$WORK/pybase/zz-placeholder.crt"
    cat > "$WORK/pybase/Containerfile" <<EOF
FROM localhost/local/debian:$SUITE
COPY *.crt /usr/local/share/ca-certificates/
RUN rm -f /usr/local/share/ca-certificates/zz-placeholder.crt \\
 && apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      ca-certificates python3 python3-pip python3-venv python-is-python3 \\
 && update-ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_BREAK_SYSTEM_PACKAGES=1 \\
    PYTHONUNBUFFERED=1
LABEL local.cahash=$CAHASH
EOF
    podman build --network=host -t localhost/local/python:slim "$WORK/pybase"
fi

# 6. Smoke test.
podman run --rm localhost/local/debian:"$SUITE" cat /etc/debian_version
podman run --rm localhost/local/python:slim python --version
echo "podman ready: make compose-test (BASE_IMAGE=localhost/local/python:slim, DEBIAN_IMAGE=localhost/local/debian:$SUITE)"
