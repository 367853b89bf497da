#!/usr/bin/env bash
# Install reconciler as systemd services: a system user, the directories, a venv in
# /opt/reconciler, the three units (daemon, API, edge), the template each site runs in as its
# own user (reconciler-site@.service) and the polkit rule that lets the daemon start those.
#   sudo systemd/install.sh   # then: systemctl enable --now reconciler-edge reconciler reconciler-api
#   DESTDIR=/tmp/stage SKIP_SYSTEM=1 systemd/install.sh   # lay out files only (packaging, tests)
#   WHEELHOUSE=/path systemd/install.sh   # offline: the package and its dependencies as wheels
# Run again over an installation to upgrade it (the token and the settings are kept); then
# `systemctl restart reconciler reconciler-api`: sites keep serving throughout.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/reconciler}"
SKIP_SYSTEM="${SKIP_SYSTEM:-}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="${WHEELHOUSE:-}"

install -d -m 0755 "$DESTDIR$PREFIX" "$DESTDIR/etc/systemd/system"
install -d -m 0750 "$DESTDIR/etc/reconciler" "$DESTDIR/etc/reconciler/desired" \
    "$DESTDIR/var/lib/reconciler" "$DESTDIR/srv/reconciler"
install -m 0644 systemd/reconciler.service systemd/reconciler-api.service \
    systemd/reconciler-edge.service systemd/reconciler-site@.service \
    systemd/reconciler-build@.service \
    "$DESTDIR/etc/systemd/system/"
# the sites (--site-users) run as instances of reconciler-site@.service in the system manager,
# each as its own dynamic user; this rule lets the reconciler user start, stop and limit those
# units and no others (an earlier rule, for transient units, is replaced)
[ -d "$DESTDIR/etc/polkit-1/rules.d" ] || install -d -m 0755 "$DESTDIR/etc/polkit-1/rules.d"
rm -f "$DESTDIR/etc/polkit-1/rules.d/50-reconciler.rules"
install -m 0644 systemd/50-reconciler-sites.rules "$DESTDIR/etc/polkit-1/rules.d/"
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
  [ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
  if [ -n "$WHEELHOUSE" ]; then
    "$PREFIX/venv/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" \
        --upgrade --force-reinstall --no-deps reconciler
    "$PREFIX/venv/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" reconciler
  else
    "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
    "$PREFIX/venv/bin/pip" install --quiet --upgrade .
  fi
  chown -R reconciler:reconciler /etc/reconciler/desired /var/lib/reconciler /srv/reconciler
  chown root:reconciler /etc/reconciler /etc/reconciler/api-token /etc/reconciler/reconciler.env
  chmod 0640 /etc/reconciler/api-token /etc/reconciler/reconciler.env
  # without --site-users (--systemd-run alone) sites run as transient units of the reconciler
  # user's manager, which lingering starts at boot and keeps running with no one logged in
  if ! loginctl enable-linger reconciler 2>/dev/null; then
    install -d /var/lib/systemd/linger && touch /var/lib/systemd/linger/reconciler
  fi
  systemctl daemon-reload
  systemctl start "user@$(id -u reconciler).service"
  echo "installed; start with: systemctl enable --now reconciler-edge reconciler reconciler-api"
fi
