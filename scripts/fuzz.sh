#!/usr/bin/env bash
# fuzz.sh TIME PKG:FuzzName...: runs each fuzz target in turn for TIME (go test
# -fuzz takes one package and one target at a time). When a target fails it
# prints the failing input that go test wrote under testdata/fuzz/<Target>/ and
# the command that replays it, goes on with the other targets, and exits 1.
# FUZZ_PARALLEL, when set, is passed as -parallel (fuzz workers; default GOMAXPROCS).
set -uo pipefail

GO=${GO:-go}
time=$1
shift
failed=()

# spurious: go1.26's fuzz coordinator can fail a target at the end of a
# duration -fuzztime with a bare "context deadline exceeded" and no input
# (golang/go#75804, fixed in Go 1.27): a race between the deadline and its
# own cancellation, found in nothing the target did. That is the only line
# under the target's FAIL line then, and no input was written.
spurious() {
	local name=$1 log=$2
	grep -q '^Failing input written to' "$log" && return 1
	local msg
	msg=$(awk -v fail="--- FAIL: $name " 'index($0, fail) == 1 { getline; print; exit }' "$log")
	[ "$(echo "$msg" | sed 's/^[[:space:]]*//')" = "context deadline exceeded" ] &&
		[ "$(grep -c '^[[:space:]]' <(sed -n "/^--- FAIL: $name /,/^FAIL/p" "$log"))" -eq 1 ]
}

# report prints what to look at and how to reproduce a failed target.
report() {
	local pkg=$1 name=$2 log=$3
	echo
	echo "=== fuzz target $name in $pkg FAILED"
	local written
	written=$(sed -n 's/^[[:space:]]*Failing input written to \(.*\)$/\1/p' "$log" | tail -1)
	if [ -n "$written" ]; then
		local file="$pkg/$written" input
		input=$(basename "$written")
		echo "--- failing input $file:"
		cat "$file"
		echo
		echo "--- reproduce with:"
		echo "go test -run='^$name\$/^$input\$' $pkg"
		echo "(commit $file to keep it as a regression test once fixed)"
		return
	fi
	local seed
	seed=$(sed -n "s/^failure while testing seed corpus entry: $name\/\(.*\)$/\1/p" "$log" | tail -1)
	if [ -n "$seed" ]; then
		echo "--- a seed input fails (f.Add in the target, or $pkg/testdata/fuzz/$name/$seed)"
		[ -f "$pkg/testdata/fuzz/$name/$seed" ] && cat "$pkg/testdata/fuzz/$name/$seed" && echo
		echo "--- reproduce with:"
		echo "go test -run='^$name\$/^$seed\$' $pkg"
		return
	fi
	echo "--- no failing input was written: the fuzz engine itself failed; its report:"
	sed -n "/^--- FAIL: $name /,\$p" "$log" | grep -v '^fuzz: elapsed'
	echo "--- reproduce with:"
	echo "$GO test -run='^\$' -fuzz='^$name\$' -fuzztime=$time $pkg"
}

# go test's -timeout (default 10m) also bounds a fuzz run, which then dies with
# "test timed out" rather than ending at -fuzztime: give it the fuzz time plus
# 10 minutes for building, the seed corpus and minimizing a crasher. A count
# (-fuzztime=Nx) keeps the default.
timeout=10m
if secs=$(awk -v d="$time" 'BEGIN {
	if (d !~ /^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$/) exit 1
	s = 0
	while (match(d, /^[0-9.]+(h|ms|m|s)/)) {
		tok = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
		n = tok + 0; u = tok; sub(/^[0-9.]+/, "", u)
		s += n * (u == "h" ? 3600 : u == "m" ? 60 : u == "s" ? 1 : 0.001)
	}
	printf "%d", s + 600 }'); then
	timeout=${secs}s
fi

for t in "$@"; do
	pkg=${t%%:*} name=${t##*:}
	log=$(mktemp)
	echo "fuzz $name in $pkg for $time"
	$GO test -run='^$' -fuzz="^$name\$" -fuzztime="$time" -timeout="$timeout" ${FUZZ_PARALLEL:+-parallel="$FUZZ_PARALLEL"} "$pkg" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if [ "$rc" -ne 0 ]; then
		if spurious "$name" "$log"; then
			echo "fuzz: $name ran its full time and found nothing; the engine's bare \"context deadline exceeded\" is golang/go#75804, not a finding"
		else
			report "$pkg" "$name" "$log"
			failed+=("$pkg:$name")
		fi
	fi
	rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
	echo
	echo "fuzz: FAILED: ${failed[*]}"
	exit 1
fi
