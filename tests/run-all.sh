#!/bin/sh
# make test: cmocka unit tests, then pytest integration tests on real
# mounts.  Ends with one line "N passed, N failed" for CI.
python=$1; shift
unit_out=$(sh tests/run-unit.sh "$@"); unit_rc=$?
printf '%s\n' "$unit_out"
u=$(printf '%s\n' "$unit_out" | tail -1)
up=$(echo "$u" | sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
uf=$(echo "$u" | sed -n 's/^unit: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p')

report=$(mktemp /tmp/viperfs-junit-XXXXXX.xml)
"$python" -m pytest -q -p no:cacheprovider --junitxml="$report" tests/integration
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
ip=$1; if_=$2; is=$3
[ "$py_rc" != 0 ] && [ "$if_" = 0 ] && if_=1
total_p=$((${up:-0} + ip)); total_f=$((${uf:-1} + if_))
[ "$unit_rc" != 0 ] && [ "$total_f" = 0 ] && total_f=1
echo "integration: $ip passed, $if_ failed, $is skipped"
echo "$total_p passed, $total_f failed, $is skipped"
[ "$total_f" = 0 ]
