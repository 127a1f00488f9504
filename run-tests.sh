#!/usr/bin/env bash
# Every test: unit, property, privileged runtime and end-to-end. Run as root.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /bin/busybox ] || ! command -v nft >/dev/null || ! command -v iptables >/dev/null; then
    apt-get update -qq && apt-get install -y -qq busybox-static nftables iptables
fi
cargo test --workspace --all-targets
