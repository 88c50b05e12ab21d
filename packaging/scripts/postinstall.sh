#!/bin/sh
# deb: $1 = configure, $2 = previous version (empty on first install).
# rpm: $1 = 1 on first install, 2 on upgrade.
set -e
systemd_running() { [ -d /run/systemd/system ]; }

first=no
case "$1" in
  configure) [ -z "$2" ] && first=yes ;;
  1) first=yes ;;
esac

if systemd_running; then
  systemctl daemon-reload || true
fi
if [ "$first" = yes ]; then
  systemctl enable mqha-agent.service >/dev/null 2>&1 || true
  if systemd_running; then systemctl start mqha-agent.service || true; fi
elif systemd_running; then
  # Upgrade: pick up the new binary if the agent was running.
  systemctl try-restart mqha-agent.service || true
fi
exit 0
