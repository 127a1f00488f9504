#!/usr/bin/env bash
# Every test: unit, property, privileged runtime and end-to-end. Run as root.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /bin/busybox ] || ! command -v nft >/dev/null || ! command -v iptables >/dev/null \
    || ! command -v gcc >/dev/null || [ ! -e /usr/lib/x86_64-linux-gnu/libc.a ] \
    || [ ! -x /usr/bin/docker-registry ] || ! command -v ip >/dev/null \
    || ! command -v etcd >/dev/null; then
    apt-get update -qq && apt-get install -y -qq busybox-static nftables iptables gcc libc6-dev \
        docker-registry iproute2 etcd-server
fi
cargo test --workspace --all-targets
