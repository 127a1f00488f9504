#!/usr/bin/env bash
# The main job: an embedded one-node shoal cluster bringing up a compose example.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v busybox >/dev/null || ! busybox --list >/dev/null 2>&1 || [ ! -x /bin/busybox ]; then
    apt-get update -qq && apt-get install -y -qq busybox-static
fi
cargo build --release --quiet
SHOAL=target/release/shoal

demo=$(mktemp -d /tmp/shoal-demo.XXXXXX)
export SHOAL_HOST="$demo/shoal.sock"
"$SHOAL" daemon --data-dir "$demo/data" --socket "$SHOAL_HOST" --listen-addr 127.0.0.1:0 \
    --cgroup-parent "shoal-demo-${demo##*.}" 2>"$demo/daemon.log" &
daemon=$!
cleanup() {
    "$SHOAL" compose -f compose-examples/hello/compose.yaml down >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        [ -z "$(ls -A "$demo/data/containers" 2>/dev/null)" ] && break
        sleep 0.1
    done
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rmdir /sys/fs/cgroup/*/"shoal-demo-${demo##*.}" 2>/dev/null || true
    rm -rf "$demo"
}
trap cleanup EXIT

for _ in $(seq 100); do "$SHOAL" info >/dev/null 2>&1 && break; sleep 0.1; done

set -x
"$SHOAL" info
"$SHOAL" image bootstrap busybox
"$SHOAL" image ls
"$SHOAL" compose -f compose-examples/hello/compose.yaml up --wait
"$SHOAL" stack ls
"$SHOAL" service ls
"$SHOAL" compose -f compose-examples/hello/compose.yaml ps
"$SHOAL" node ls
"$SHOAL" service logs hello_web
