#!/bin/sh
# deb: $1 = remove | upgrade | deconfigure. rpm: $1 = 0 on erase, 1 on upgrade.
set -e
unit=mqha-agent.service
case "$1" in
  remove|deconfigure)
    # Stopped, not disabled: deb-systemd-helper remembers it was enabled
    # (postrm masks it while the package is gone).
    if [ -d /run/systemd/system ]; then systemctl stop "$unit" || true; fi
    ;;
  0)
    if [ -d /run/systemd/system ]; then systemctl stop "$unit" || true; fi
    systemctl disable "$unit" >/dev/null 2>&1 || true
    ;;
esac
exit 0
