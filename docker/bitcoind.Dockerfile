# A regtest-capable bitcoind from Debian's archive: Bitcoin Knots (a Bitcoin Core derivative,
# same daemon, RPC and regtest), the package the pool itself fetches (pool/node/binaries.py:
# bitcoin-knots from sid, its libraries from the base image's release).
# The base image is a build argument: debian:trixie-slim from a registry, or a Debian image
# built locally from the archive. Build context: the repository root.
ARG DEBIAN_IMAGE=debian:trixie-slim
FROM ${DEBIAN_IMAGE}
ARG KNOTS_SUITE=sid
# Empty: the mirror the base image already uses (else deb.debian.org).
ARG DEBIAN_MIRROR=
# Only bitcoin-knots comes from KNOTS_SUITE (pinned low); everything else stays on the base
# release, but for the newer libraries the package needs, which come from KNOTS_SUITE too.
# Signatures are checked, not the Release file's expiry date (a machine whose clock runs past
# a mirror's snapshot would refuse sid otherwise). The package creates a 'bitcoin' user: it gets
# uid/gid 10001, the same as the pool image's user, so the pool can read this node's RPC cookie.
RUN set -eu; \
    mirror="$DEBIAN_MIRROR"; \
    [ -n "$mirror" ] || mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1); \
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null); \
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian; \
    echo "deb [check-valid-until=no] $mirror $KNOTS_SUITE main" > /etc/apt/sources.list.d/knots.list; \
    printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$KNOTS_SUITE" \
        > /etc/apt/preferences.d/knots; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "bitcoin-knots/$KNOTS_SUITE"; \
    rm -rf /var/lib/apt/lists/*; \
    bitcoind -version | head -n 1; \
    if getent passwd bitcoin >/dev/null; then \
        groupmod --gid 10001 bitcoin; \
        usermod --uid 10001 --gid 10001 --home /bitcoin bitcoin; \
    else \
        groupadd --gid 10001 bitcoin; \
        useradd --uid 10001 --gid 10001 --home-dir /bitcoin --no-create-home bitcoin; \
    fi; \
    mkdir -p /bitcoin; \
    chown bitcoin:bitcoin /bitcoin
COPY docker/bitcoin.conf /etc/bitcoin/bitcoin.conf
USER bitcoin
VOLUME /bitcoin
EXPOSE 18443 18444 28332
ENTRYPOINT ["bitcoind", "-conf=/etc/bitcoin/bitcoin.conf", "-datadir=/bitcoin"]
