#!/bin/sh
# deb: $1 = remove | upgrade | deconfigure. rpm: $1 = 0 on erase, 1 on upgrade.
set -e
case "$1" in
  remove|deconfigure|0)
    if [ -d /run/systemd/system ]; then systemctl stop mqha-agent.service || true; fi
    systemctl disable mqha-agent.service >/dev/null 2>&1 || true
    ;;
esac
exit 0
