#!/usr/bin/env bash
# Install reconciler as systemd services: a system user, the directories, a venv in
# /opt/reconciler, the three units (daemon, API, edge) and the polkit rule for transient
# site units.
#   sudo systemd/install.sh   # then: systemctl enable --now reconciler-edge reconciler reconciler-api
#   DESTDIR=/tmp/stage SKIP_SYSTEM=1 systemd/install.sh   # lay out files only (packaging, tests)
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/reconciler}"
SKIP_SYSTEM="${SKIP_SYSTEM:-}"
PYTHON="${PYTHON:-python3}"

install -d -m 0755 "$DESTDIR$PREFIX" "$DESTDIR/etc/systemd/system" "$DESTDIR/etc/polkit-1/rules.d"
install -d -m 0750 "$DESTDIR/etc/reconciler" "$DESTDIR/etc/reconciler/desired" \
    "$DESTDIR/var/lib/reconciler" "$DESTDIR/srv/reconciler"
install -m 0644 systemd/reconciler.service systemd/reconciler-api.service \
    systemd/reconciler-edge.service "$DESTDIR/etc/systemd/system/"
install -m 0644 systemd/reconciler-polkit.rules "$DESTDIR/etc/polkit-1/rules.d/50-reconciler.rules"
install -m 0644 README.md "$DESTDIR$PREFIX/README.md"
if [ ! -e "$DESTDIR/etc/reconciler/reconciler.env" ]; then
  printf '# RECONCILER_PUBLIC_HOST=example.com\n# RECONCILER_PORT_RANGE=3001-3999\n# RECONCILER_RUNTIME=process\n' \
    > "$DESTDIR/etc/reconciler/reconciler.env"
fi
if [ ! -e "$DESTDIR/etc/reconciler/api-token" ]; then
  (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$DESTDIR/etc/reconciler/api-token")
fi

if [ -z "$SKIP_SYSTEM" ]; then
  getent group reconciler >/dev/null || groupadd --system reconciler
  getent passwd reconciler >/dev/null || useradd --system --gid reconciler \
      --home-dir /var/lib/reconciler --shell /usr/sbin/nologin reconciler
  "$PYTHON" -m venv "$PREFIX/venv"
  "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
  "$PREFIX/venv/bin/pip" install --quiet .
  chown -R reconciler:reconciler /etc/reconciler/desired /var/lib/reconciler /srv/reconciler
  chown root:reconciler /etc/reconciler /etc/reconciler/api-token /etc/reconciler/reconciler.env
  chmod 0640 /etc/reconciler/api-token /etc/reconciler/reconciler.env
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now reconciler-edge reconciler reconciler-api"
fi
