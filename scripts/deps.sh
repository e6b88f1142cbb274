#!/usr/bin/env bash
# deps.sh: make sure the real components the tests run are installed: Dovecot (the
# IMAP backend), Pebble and pebble-challtestsrv (the ACME CA), python3, curl, and
# nft (Debian nftables: the firewall tests look at the kernel's table with it),
# redis-server (the cluster's shared state), chromium (the status page, driven
# headless), promtool (Debian prometheus: the alert rules), systemd-analyze and
# man (the unit file and the man page).
# As root on Debian it installs what is missing; otherwise it says what to install.
# Exits non-zero when something is still missing and CI=true.
set -euo pipefail
cd "$(dirname "$0")"
. ./deps-lib.sh

status=0
ensure dovecot-imapd pebble curl python3 nftables redis-server chromium prometheus systemd man-db -- \
	/usr/sbin/dovecot pebble pebble-challtestsrv python3 curl nft redis-server chromium promtool systemd-analyze man || status=$?
if [ -x /usr/sbin/dovecot ]; then
	stop_service dovecot /run/dovecot/master.pid
fi
if have redis-server; then
	stop_service redis-server /run/redis/redis-server.pid
fi
if have prometheus; then
	stop_service prometheus /run/prometheus/prometheus.pid
fi
exit "$status"
