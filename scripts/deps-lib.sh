# shellcheck shell=bash
# Shared by deps.sh and bench-deps.sh: find binaries, install Debian packages when
# root, stop the system services those packages start. Sourced, not run.

# have NAME: true when NAME is an executable in PATH, /usr/sbin or /usr/bin
# (non-root PATHs often lack /usr/sbin, where dovecot, haproxy and nginx live).
have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

# missing CHECK...: print the checks that fail. A check is a binary name or an
# absolute path to a file that must exist.
missing() {
	local c
	for c in "$@"; do
		case "$c" in
		/*) [ -e "$c" ] || echo "$c" ;;
		*) have "$c" || echo "$c" ;;
		esac
	done
}

# shout LINE...: a banner nobody scrolls past.
shout() {
	echo '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' >&2
	printf '!!! %s\n' "$@" >&2
	echo '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' >&2
}

# stop_service NAME PIDFILE: the packages start system services (Dovecot on 143
# and 993, nginx on 80) that the tests do not use: they run their own instances
# on free ports. Stop one only when its pidfile names a live process, so that
# nothing else (a test's own instance) can be hit, and disable it where systemd
# runs.
stop_service() {
	local name=$1 pidfile=$2 pid
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		if systemctl is-enabled --quiet "$name" 2>/dev/null || systemctl is-active --quiet "$name" 2>/dev/null; then
			echo "deps: stopping and disabling the system $name service (tests run their own)"
			systemctl disable --now "$name" || true
		fi
		return 0
	fi
	[ -r "$pidfile" ] || return 0
	pid=$(cat "$pidfile" 2>/dev/null || true)
	case "$pid" in '' | *[!0-9]*) return 0 ;; esac
	kill -0 "$pid" 2>/dev/null || return 0
	echo "deps: stopping the system $name service, pid $pid (tests run their own)"
	service "$name" stop || true
}

# ensure PACKAGES -- CHECKS: install PACKAGES when a check fails and we are root;
# then report what is still missing. Returns non-zero only in CI (CI=true) with
# something missing: locally the tests that need it skip, loudly.
ensure() {
	local pkgs=() checks=() still
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do pkgs+=("$1"); shift; done
	shift
	checks=("$@")
	if [ -z "$(missing "${checks[@]}")" ]; then
		echo "deps: ok: ${checks[*]}"
		return 0
	fi
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "deps: missing: $(missing "${checks[@]}" | xargs) - installing ${pkgs[*]}"
		# A failed install is reported below with what is still missing.
		if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"; }; then
			echo "deps: apt-get failed" >&2
		fi
	fi
	still=$(missing "${checks[@]}" | xargs)
	if [ -z "$still" ]; then
		echo "deps: ok: ${checks[*]}"
		return 0
	fi
	shout "MISSING: $still" \
		"Tests that run these real components will be SKIPPED (and FAIL under CI=true)." \
		"Install as root:  apt-get install -y ${pkgs[*]}"
	[ "${CI:-}" != "true" ]
}
