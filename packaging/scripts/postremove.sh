#!/bin/sh
# deb: $1 = remove | purge | upgrade | ... rpm: $1 = 0 on erase, 1 on upgrade.
# The daemons' configurations the agent wrote stay: removing the agent must
# not take the MQTT service down.
set -e
unit=mqha-agent.service
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
case "$1" in
  remove)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
      deb-systemd-helper mask "$unit" >/dev/null || true
    fi
    ;;
  purge)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
      deb-systemd-helper purge "$unit" >/dev/null || true
      deb-systemd-helper unmask "$unit" >/dev/null || true
    fi
    rm -rf /var/lib/mqha /run/mqha
    ;;
  0)
    # rpm has no purge; keep state like dpkg's remove does.
    ;;
esac
exit 0
