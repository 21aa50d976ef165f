# options.awk: viperfs(8) from its template and the daemon's option table.
#
#   viperfs --help | awk -f options.awk - viperfs.8.in > viperfs.8
#
# The first input is `viperfs --help`: below its "Options (" line, the
# groups of the option table in engine/config.c (vp_config_help).  The
# second is the page, whose line `.\" @OPTIONS@` becomes a .SS per group
# and one .TP entry per option, in the table's order.
# Fails if the help lists no option, so a changed --help cannot leave the
# page without its options unnoticed.

# s as troff text lines of at most 72 bytes where the words allow:
# backslashes escaped, a line's leading . or ' disarmed.
function roff(s,    words, n, i, out, line) {
	gsub(/\\/, "\\e", s)
	n = split(s, words, / +/)
	out = line = ""
	for (i = 1; i <= n; i++) {
		if (line != "" && length(line) + 1 + length(words[i]) > 72) {
			out = out disarm(line) "\n"
			line = ""
		}
		line = line == "" ? words[i] : line " " words[i]
	}
	return out disarm(line)
}

function disarm(line) {
	return line ~ /^[.']/ ? "\\&" line : line
}

# The options part of --help: a heading per group ("The mount:"), then per
# option "  NAME" and its help from column 22, wrapped onto lines that
# start with 21 spaces.
function flush_entry() {
	if (name == "")
		return
	def = ""
	if (match(rest, / \(default: [^()]*\)$/)) {
		def = substr(rest, RSTART + 11, RLENGTH - 12)
		rest = substr(rest, 1, RSTART - 1)
	}
	n++
	names[n] = name
	helps[n] = rest
	defs[n] = def
	groups[n] = group
	name = ""
}

FNR == NR {
	if ($0 ~ /^Options \(/) {
		in_table = 1
		next
	}
	if (!in_table)
		next
	if ($0 ~ /^Exit status/) {
		flush_entry()
		in_table = 0
	} else if ($0 ~ /^[A-Z].*:$/) {
		flush_entry()
		group = substr($0, 1, length($0) - 1)
	} else if ($0 ~ /^  [a-z_]+( |$)/) {
		flush_entry()
		name = $1
		rest = substr($0, 22)
		sub(/^ +/, "", rest)
	} else if (name != "" && $0 ~ /^                     [^ ]/) {
		line = $0
		sub(/^ +/, "", line)
		rest = rest == "" ? line : rest " " line
	}
	next
}

/^\.\\" @OPTIONS@$/ {
	if (n == 0) {
		print "options.awk: no options in the viperfs --help output" > "/dev/stderr"
		exit 1
	}
	for (i = 1; i <= n; i++) {
		if (groups[i] != groups[i - 1])
			print ".SS " roff(groups[i])
		print ".TP"
		print ".B " names[i]
		print roff(helps[i] ".")
		if (defs[i] != "" && defs[i] != "none")
			print "Default: " roff(defs[i]) "."
	}
	next
}

{ print }
