#!/usr/bin/env bash
# Builds tollgate's image here, with buildah (or podman), pulling no base image: the root file
# system is assembled from the release binary and the shared libraries and CA bundle of Debian's
# own packages (apt-get download + dpkg-deb -x), then built FROM scratch (Containerfile).
#
#   deploy/container/build.sh [BINARY] [IMAGE]      default: target/release/tollgate, localhost/tollgate:dev
#
# Prints the image id on the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-$repo/target/release/tollgate}
image=${2:-localhost/tollgate:dev}
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
mkdir -p "$rootfs"/usr/local/bin "$rootfs"/etc/tollgate/allowlists "$rootfs"/etc/ssl/certs \
    "$rootfs"/tmp "$ctx/data" "$ctx/debs" "$ctx/x"

# The C runtime the binary links (ldd: libc, libm, libgcc_s, the loader) and the CA bundle, from
# Debian's packages of this machine's release.
chmod 0755 "$ctx"; chmod 0777 "$ctx/debs"
download() { (cd "$ctx/debs" && apt-get download -qq libc6 libgcc-s1 ca-certificates >/dev/null 2>&1); }
download || { apt-get update -qq >/dev/null && download; } || {
    echo "apt-get download libc6 libgcc-s1 ca-certificates failed" >&2; exit 1; }
for deb in "$ctx"/debs/*.deb; do dpkg-deb -x "$deb" "$ctx/x"; done
libdir=lib/x86_64-linux-gnu
[ -d "$ctx/x/usr/$libdir" ] && [ ! -d "$ctx/x/$libdir" ] && libdir=usr/lib/x86_64-linux-gnu
mkdir -p "$rootfs/lib/x86_64-linux-gnu" "$rootfs/lib64"
for lib in $(ldd "$bin" | awk '/=>/ {print $1} /ld-linux/ {print $1}'); do
    name=$(basename "$lib")
    src=$(find "$ctx/x" -name "$name" | head -n1)
    [ -n "$src" ] || { echo "no $name in Debian's libc6/libgcc-s1" >&2; exit 1; }
    cp -L "$src" "$rootfs/lib/x86_64-linux-gnu/$name"
done
ln -sf ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$rootfs/lib64/ld-linux-x86-64.so.2"
# Mozilla's roots as Debian ships them (update-ca-certificates would build the same bundle).
cat "$ctx"/x/usr/share/ca-certificates/mozilla/*.crt > "$rootfs/etc/ssl/certs/ca-certificates.crt"

install -m 0755 "$bin" "$rootfs/usr/local/bin/tollgate"
install -m 0644 "$here/tollgate.toml" "$rootfs/etc/tollgate/tollgate.toml"
printf 'root:x:0:0::/root:/nonexistent\ntollgate:x:10001:10001::/var/lib/tollgate:/nonexistent\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ntollgate:x:10001:\n' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
cp "$here/Containerfile" "$ctx/Containerfile"

if command -v buildah >/dev/null 2>&1; then
    buildah bud --quiet --format docker --layers=false -f "$ctx/Containerfile" -t "$image" "$ctx"
else
    podman build --quiet --format docker -f "$ctx/Containerfile" -t "$image" "$ctx"
fi
