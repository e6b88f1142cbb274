#!/usr/bin/env bash
# bench-deps.sh: the peers the benchmarks compare imapgw with: HAProxy and nginx's
# mail proxy (nginx-light plus libnginx-mod-mail). As root on Debian it installs
# what is missing; otherwise it says what to install. Exits non-zero when
# something is still missing and CI=true.
set -euo pipefail
cd "$(dirname "$0")"
. ./deps-lib.sh

status=0
ensure haproxy nginx-light libnginx-mod-mail -- \
	haproxy nginx /usr/lib/nginx/modules/ngx_mail_module.so || status=$?
# The benchmarks start their own instances on free ports.
if have haproxy; then stop_service haproxy /run/haproxy.pid; fi
if have nginx; then stop_service nginx /run/nginx.pid; fi
exit "$status"
