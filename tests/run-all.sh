#!/bin/sh
# make test: cmocka unit tests, then pytest integration tests on real
# mounts.  Ends with one line "N passed, N failed" for CI.
python=$1; shift
unit_out=$(sh tests/run-unit.sh "$@"); unit_rc=$?
printf '%s\n' "$unit_out"
u=$(printf '%s\n' "$unit_out" | tail -1)
up=$(echo "$u" | sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
uf=$(echo "$u" | sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p')

# One pytest run; prints "passed failed skipped" (a crash counts as a failure).
run_pytest() {
	report=$(mktemp /tmp/viperfs-junit-XXXXXX.xml)
	"$python" -m pytest -q -p no:cacheprovider --junitxml="$report" "$@" >&2
	py_rc=$?
	counts=$("$python" - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    r = ET.parse(sys.argv[1]).getroot()
    s = r if r.tag == "testsuite" else r.find("testsuite")
    t, f, e, k = (int(s.get(x, 0)) for x in ("tests", "failures", "errors", "skipped"))
    print(t - f - e - k, f + e, k)
except Exception:
    print(0, 1, 0)
PY
)
	rm -f "$report"
	set -- $counts
	[ "$py_rc" != 0 ] && [ "$2" = 0 ] && set -- "$1" 1 "$3"
	echo "$1 $2 $3"
}

# The whole suite on the default read path (passthrough where the kernel
# has it), then the read-heavy files again with the daemon serving reads.
set -- $(run_pytest tests/integration tests/paper)
ip=$1; if_=$2; is=$3
set -- $(VIPERFS_EXTRA_OPTS=passthrough=off run_pytest tests/integration/test_posix.py \
	tests/integration/test_loaders.py tests/integration/test_watch.py)
echo "integration, passthrough=off: $1 passed, $2 failed, $3 skipped"
ip=$((ip + $1)); if_=$((if_ + $2)); is=$((is + $3))
total_p=$((${up:-0} + ip)); total_f=$((${uf:-1} + if_))
[ "$unit_rc" != 0 ] && [ "$total_f" = 0 ] && total_f=1
echo "integration: $ip passed, $if_ failed, $is skipped"
echo "$total_p passed, $total_f failed, $is skipped"
[ "$total_f" = 0 ]
