#!/usr/bin/env bash
# Build (once) the Docker image the systemd suite boots: a Debian bookworm root filesystem
# made with debootstrap from the Debian package registry, with systemd as its init, logind (it
# starts the service user's manager, where the sites run), D-Bus and polkit (to show that the
# service user cannot start system units), python3 and curl.
# The image is tagged by a digest of these inputs, so a rerun with the same inputs is a no-op.
#   tests/systemd/image.sh          # prints the image tag
set -euo pipefail
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PACKAGES="systemd,systemd-sysv,dbus,adduser,libpam-systemd,polkitd,python3,python3-venv,curl,procps,iproute2"
inputs="$SUITE $MIRROR $PACKAGES $(sha256sum "$0" | cut -c1-64)"
tag="reconciler-systemd-test:$(printf '%s' "$inputs" | sha256sum | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}
root="$(mktemp -d /var/tmp/reconciler-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2; then
  tail -40 "$root/debootstrap/debootstrap.log" >&2 || true
  exit 1
fi
# no getty on a console that is not there; a machine id made at first boot
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: > "$root/etc/machine-id"
chroot "$root" systemctl mask getty@tty1.service console-getty.service \
  >/dev/null 2>&1 || true
tar -C "$root" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' - "$tag" >/dev/null
echo "$tag"
