#!/bin/sh
# deb: $1 = configure, $2 = previously configured version (empty on a first
#      install; also set when reinstalling after `apt remove`).
# rpm: $1 = 1 on first install, 2 on upgrade.
# On Debian, enablement follows deb-systemd-helper's conventions (as
# dh_installsystemd writes them): it remembers whether the unit was enabled,
# so a reinstall after `apt remove` comes back enabled and running.
set -e
systemd_running() { [ -d /run/systemd/system ]; }
unit=mqha-agent.service

if systemd_running; then
  systemctl daemon-reload || true
fi
case "$1" in
  configure)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
      deb-systemd-helper unmask "$unit" >/dev/null || true
      # was-enabled is true on a first install and when it was enabled before.
      if deb-systemd-helper --quiet was-enabled "$unit"; then
        deb-systemd-helper enable "$unit" >/dev/null || true
      else
        deb-systemd-helper update-state "$unit" >/dev/null || true
      fi
    else
      [ -z "$2" ] && systemctl enable "$unit" >/dev/null 2>&1 || true
    fi
    if systemd_running && systemctl --quiet is-enabled "$unit" 2>/dev/null; then
      # First install, reinstall, or upgrade (the new binary): running after.
      systemctl restart "$unit" || true
    fi
    ;;
  1)
    systemctl enable "$unit" >/dev/null 2>&1 || true
    if systemd_running; then systemctl start "$unit" || true; fi
    ;;
  2)
    # Upgrade: pick up the new binary if the agent was running.
    if systemd_running; then systemctl try-restart "$unit" || true; fi
    ;;
esac
exit 0
