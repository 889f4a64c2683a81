#!/usr/bin/env bash
# Builds the image kiln:local from binaries already built on this machine, without pulling
# anything from a registry: for machines where `docker build -f deploy/Dockerfile` cannot
# fetch its base images.
#
#   deploy/build-local-image.sh [TARGET_DIR]
#
# TARGET_DIR holds kiln, kiln-agent and kiln-coordinator (default: target/release when all
# three are there, else target/debug). The image name comes from KILN_IMAGE (default
# kiln:local).
#
# The rootfs is the three binaries in /usr/local/bin, every shared library `ldd` says they
# need (the dynamic loader included), and Debian's busybox-static as /bin/busybox with a
# symlink per applet (so stages written as shell scripts find sh, echo, printf, wc, sleep...).
# busybox-static is installed with apt-get when it is missing. The tree is tarred and given
# to `docker import`. Running it again replaces the tag (and removes the image it replaced
# when nothing else uses it). The last line printed is the image id.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${KILN_IMAGE:-kiln:local}"
bins=(kiln kiln-coordinator kiln-agent)

die() { echo "build-local-image: $*" >&2; exit 1; }

has_bins() {
  local dir="$1" b
  for b in "${bins[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

# --- where the binaries are ----------------------------------------------------------------
if [[ $# -gt 1 ]]; then
  die "usage: $0 [TARGET_DIR]"
elif [[ $# -eq 1 ]]; then
  target="$1"
  [[ "$target" = /* ]] || target="$PWD/$target"
  has_bins "$target" || die "$target does not hold all of: ${bins[*]}"
elif has_bins "$repo/target/release"; then
  target="$repo/target/release"
elif has_bins "$repo/target/debug"; then
  target="$repo/target/debug"
else
  die "no built binaries in $repo/target/release or $repo/target/debug; build them first (cargo build --release --workspace --bins) or pass TARGET_DIR"
fi

command -v docker >/dev/null || die "docker not found"
command -v ldd >/dev/null || die "ldd not found"

# --- busybox-static --------------------------------------------------------------------------
# Debian's busybox-static puts a static busybox at /bin/busybox.
busybox=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  echo "build-local-image: installing busybox-static with apt-get" >&2
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static >&2; then
    $sudo apt-get update >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static >&2
  fi
fi
[[ -x "$busybox" ]] || die "$busybox missing after installing busybox-static"

# --- the rootfs --------------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,usr/bin,usr/local/bin,etc,data,root,var/lib/kiln}
install -d -m 1777 "$root/tmp"

for b in "${bins[@]}"; do
  install -m 0755 "$target/$b" "$root/usr/local/bin/$b"
done
install -m 0755 "$busybox" "$root/bin/busybox"

# Every library a binary needs, at the path the loader will look for it, symlinks resolved.
# `ldd` lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; a static binary says "not a dynamic executable".
copy_libs() {
  local bin="$1" out lib
  if ! out="$(ldd "$bin" 2>&1)"; then
    grep -q 'not a dynamic executable\|statically linked' <<<"$out" && return 0
    die "ldd $bin: $out"
  fi
  grep -q '=> not found' <<<"$out" && die "ldd $bin: missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  while read -r lib; do
    [[ -n "$lib" && -e "$lib" ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' <<<"$out")
}
for b in "${bins[@]}"; do copy_libs "$target/$b"; done
copy_libs "$busybox"

# One symlink per busybox applet, in /bin, unless something real is there already.
while read -r applet; do
  [[ -n "$applet" && "$applet" != busybox ]] || continue
  [[ -e "$root/bin/$applet" || -L "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
done < <("$busybox" --list)
for a in sh echo printf wc sleep true; do
  [[ -e "$root/bin/$a" ]] || die "busybox has no $a applet"
done

# Minimal /etc: name resolution through /etc/hosts then DNS (Docker and Kubernetes
# provide both files), and users for tools that look root up.
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"

# Fixed mtimes so that the tarball only changes when its contents do.
find "$root" -exec touch -h -d '2000-01-01 00:00:00 UTC' {} +

# --- import ------------------------------------------------------------------------------------
changes=(
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin'
  --change 'WORKDIR /'
  --change 'EXPOSE 7470 7471'
  --change 'CMD ["/bin/sh", "-c", "T=/data/tls; [ -f $T/ca.pem ] || { kiln tls init $T && kiln tls issue coordinator 1 --dir $T && kiln tls issue client admin --dir $T; } && exec kiln-coordinator --id 1 --bootstrap --listen 0.0.0.0:7470 --http 0.0.0.0:7471 --data-dir /data --ca $T/ca.pem --cert $T/coordinator-1.pem --key $T/coordinator-1.key --secrets-key $T/secrets.key"]'
)
tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name -cf "$work/rootfs.tar" .
layer="sha256:$(sha256sum "$work/rootfs.tar" | cut -d' ' -f1)"
config_sum="$(printf '%s\n' "${changes[@]}" | sha256sum | cut -c1-16)"
message="kiln-local-image config=$config_sum"

# Nothing to do when the tag already holds this very rootfs with this very config.
old_id="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
if [[ -n "$old_id" ]] &&
   [[ "$(docker image inspect -f '{{json .RootFS.Layers}}' "$image")" == "[\"$layer\"]" ]] &&
   [[ "$(docker image inspect -f '{{.Comment}}' "$image")" == "$message" ]]; then
  echo "build-local-image: $image is up to date" >&2
  echo "$old_id"
  exit 0
fi

new_id="$(docker import "${changes[@]}" --message "$message" "$work/rootfs.tar" "$image")"

if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
  # The previous build is now untagged; drop it unless a container still uses it.
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi

echo "build-local-image: $image from $target ($(du -h "$work/rootfs.tar" | cut -f1) rootfs)" >&2
echo "$new_id"
