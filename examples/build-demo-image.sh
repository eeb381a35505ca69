#!/bin/sh
# Build the tour's container image, localhost/kled-demo:1, from Debian's static busybox:
# no image registry is needed (or reachable) for it.
set -eu
busybox=$(command -v busybox) || { echo "install busybox-static first (make up does)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root" "$root.tar"' EXIT
mkdir -p "$root/bin"
cp "$busybox" "$root/bin/busybox"
for applet in sh echo sleep date; do ln -s busybox "$root/bin/$applet"; done
tar -C "$root" -cf "$root.tar" .
podman import -q "$root.tar" localhost/kled-demo:1 >/dev/null
echo "built localhost/kled-demo:1"
