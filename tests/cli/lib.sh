# tests/cli/lib.sh — the setup every command-line test shares: strict mode, C
# locale, a temporary folder removed on exit, and case reporting in the
# protocol tests/run counts ("ok - NAME", "not ok - NAME: why", "skip - NAME: why").
set -u
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$ROOT/bin
FIXTURES=${LORAPIPE_FIXTURES:-$ROOT/../shared/fixtures}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failed=0

ok() { echo "ok - $1"; }
notok() { echo "not ok - $1: $2"; failed=1; last_notok=$1; }
last_notok=
# A chain of checks ends with `|| unreported NAME`: a check that failed without
# saying so (a plain [ ] test) still counts as a failure, once.
unreported() { [ "$last_notok" = "$1" ] || notok "$1" "a check failed"; }
skip() { echo "skip - $1: $2"; }
finish() { exit $failed; }

# expect NAME STATUS CMD...: runs CMD (stdout to $T/out, stderr to $T/err) and
# checks its exit status.
expect() {
	local name=$1 want=$2; shift 2
	"$@" >"$T/out" 2>"$T/err"
	local got=$?
	if [ "$got" -eq "$want" ]; then return 0; fi
	notok "$name" "exit status $got, expected $want; stderr: $(head -c 400 "$T/err")"
	return 1
}

# stderr_has NAME PATTERN: the last command's stderr matches the extended regex.
stderr_has() {
	if grep -Eq -- "$2" "$T/err"; then return 0; fi
	notok "$1" "stderr lacks /$2/: $(head -c 400 "$T/err")"
	return 1
}

# fixture NAME: a folder with the fixture's tokenizer.json (decompressed) and config.
fixture() {
	local d=$T/fx-$1
	if [ ! -d "$d" ]; then
		mkdir -p "$d"
		zstd -q -d "$FIXTURES/tokenizers/$1/tokenizer.json.zst" -o "$d/tokenizer.json" || return 1
		cp "$FIXTURES/tokenizers/$1/tokenizer_config.json" "$d/"
	fi
	echo "$d"
}
