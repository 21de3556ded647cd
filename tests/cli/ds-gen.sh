#!/usr/bin/env bash
# ds-gen as a user runs it: --help and the man page, every kind of bad input
# (clear message naming file and field, exit 2, no request sent), the key
# rules, an unreachable endpoint, and the bank example spec end to end
# against tests/ref/fault_server.py (system python3), accepted by ds-fmt.
# The fault matrix, SIGKILL and resume runs are tests/ref/test_dsgen_faults.py.
. "$(dirname "$0")/lib.sh"
DG=$BIN/ds-gen
SERVER=$ROOT/tests/ref/fault_server.py
unset OPENAI_API_KEY OPENAI_BASE_URL

# A fault server on a free port: start_server NAME ARGS... sets URL and SPID.
start_server() {
	local name=$1; shift
	python3 "$SERVER" --port-file "$T/$name.port" --log "$T/$name.log" "$@" >/dev/null 2>&1 &
	SPID=$!
	for _ in $(seq 100); do [ -s "$T/$name.port" ] && break; sleep 0.05; done
	URL=http://127.0.0.1:$(cat "$T/$name.port")/v1
}
attempts() { [ -f "$T/$1.log" ] && wc -l < "$T/$1.log" || echo 0; }

# --help names every option, and the man page documents each of them.
if expect help 0 "$DG" --help; then
	opts=$(grep -oE -- '--[a-z][a-z-]+' "$T/out" | sort -u)
	missing=$(for o in $opts; do grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$ROOT/man/ds-gen.1" || echo "$o"; done)
	if [ -z "$opts" ]; then notok help "no options in --help"
	elif [ -n "$missing" ]; then notok help "man/ds-gen.1 lacks: $missing"
	else ok "help lists $(echo $opts | wc -w) options, all in man/ds-gen.1"; fi
fi
if expect help-man 0 "$DG" --help-man; then
	if python3 - "$T/out" "$ROOT/man/ds-gen.1" <<'PY'; then ok "man/ds-gen.1 OPTIONS is what opt_man writes"; else notok help-man "regenerate: bin/ds-gen --help-man"; fi
import sys
gen = open(sys.argv[1]).read()
man = open(sys.argv[2]).read()
start = man.index(".SH OPTIONS\n") + len(".SH OPTIONS\n")
end = man.index(".SH", start)
sys.exit(0 if man[start:end] == gen else 1)
PY
fi

# Usage errors.
expect usage-none 2 "$DG" && stderr_has usage-none 'give --spec FILE or --requests FILE' && ok "no mode: exit 2"
expect usage-both 2 "$DG" --spec a --requests b && stderr_has usage-both 'one of them' && ok "both modes: exit 2"
expect no-key-option 2 "$DG" --api-key sk-x --requests /dev/null && ok "there is no --api-key option (a key never goes in argv)"

# Bad specs: the message names the file, the line and the field; nothing is sent.
start_server bad
spec_err() { # spec_err NAME PATTERN JSON-EDIT TEXT: jq's EDIT applied to the test spec; the line named holds TEXT
	local name=$1 pat=$2 edit=$3 text=$4
	jq "$edit" "$ROOT/tests/ref/dsgen_test_spec.json" > "$T/$name.json"
	if expect "$name" 2 "$DG" --spec "$T/$name.json" --base-url "$URL" &&
		stderr_has "$name" "$T/$name.json:[0-9]+: $pat"; then
		local line=$(sed -n "s|^ds-gen: $T/$name.json:\([0-9]*\): .*|\1|p" "$T/err" | head -1)
		if ! sed -n "${line}p" "$T/$name.json" | grep -qF -- "$text"; then
			notok "$name" "line $line is not where $text is: $(sed -n "${line}p" "$T/$name.json")"
		elif [ "$(attempts bad)" -ne 0 ]; then
			notok "$name" "a request was sent"
		else
			ok "bad spec ($name): $(sed 's/^ds-gen: //' "$T/err" | head -c 150)"
		fi
	fi
}
spec_err unknown-tool 'intents\[1\]\.tool: unknown tool "block_crd" \(tools: check_access, block_card\)' '.intents[1].tool = "block_crd"' '"block_crd"'
spec_err schema-type 'tools\[1\]\.function\.parameters\.properties\.card_last4\.type: unknown type "str"' \
	'.tools[1].function.parameters.properties.card_last4.type = "str"' '"str"'
spec_err schema-required 'tools\[0\]\.function\.parameters\.required: must be an array' '.tools[0].function.parameters.required = "x"' '"required": "x"'
spec_err schema-pattern 'tools\[1\]\.function\.parameters\.properties\.card_last4\.pattern: bad regular expression' '.tools[1].function.parameters.properties.card_last4.pattern = "(["' '"pattern": "(["'
spec_err example-args 'intents\[1\]\.examples\[0\]: arguments\.card_last4: longer than 4 characters' \
	'.intents[1].examples[0].arguments.card_last4 = "77100"' '{'
spec_err unknown-key '"intnets": unknown key' '.intnets = []' '"intnets"'
spec_err dup-intent 'intents\[1\]\.name: "check_access" is used twice' '.intents[1].name = "check_access"' '"name": "check_access"'
spec_err share 'negative_share: must be a number from 0' '.negative_share = 1.5' '"negative_share": 1.5'
spec_err no-intents 'intents: must be a non-empty array' '.intents = []' '"intents": []'
spec_err langs 'languages\[1\]: "en" is listed twice' '.languages = ["en", "en"]' '"en"'
printf '{\n "tools": [\n  {"type": "function",}\n ]\n}\n' > "$T/badjson.json"
expect bad-json 2 "$DG" --spec "$T/badjson.json" --base-url "$URL" && stderr_has bad-json "badjson.json: bad JSON: .*line 3" \
	&& ok "spec that is not JSON: file and line"
expect no-spec 2 "$DG" --spec "$T/nope.json" --base-url "$URL" && stderr_has no-spec 'nope.json: cannot open' && ok "missing spec file"

# Bad request files: the line is named; nothing is sent.
printf '%s\n' '{"messages":[{"role":"user","content":"a"}]}' '{"messages":"hi"}' > "$T/bad1.jsonl"
expect bad-line 2 "$DG" --requests "$T/bad1.jsonl" --base-url "$URL" && stderr_has bad-line 'bad1.jsonl:2: "messages" must be a non-empty array' \
	&& ok "requests: a bad line is named before any request"
printf '%s\n' '{"id":1,"messages":[{"role":"user","content":"a"}]}' '{"id":1,"messages":[{"role":"user","content":"b"}]}' > "$T/dup.jsonl"
expect dup-id 2 "$DG" --requests "$T/dup.jsonl" --base-url "$URL" && stderr_has dup-id 'dup.jsonl:2: id 1 is used by an earlier line' \
	&& ok "requests: duplicate ids refused"
printf '{"messages":[{"role":"user","content":"a"}]}\n{"messages":[{"ro' > "$T/cut.jsonl"
expect cut-line 2 "$DG" --requests "$T/cut.jsonl" --base-url "$URL" && stderr_has cut-line 'cut.jsonl:2: not valid JSON' && ok "requests: a cut line is named"
[ "$(attempts bad)" -eq 0 ] && ok "no request was sent for any bad input" || notok no-request "$(attempts bad) requests sent"

# The key: needed for a server elsewhere, optional on this machine, never shown.
printf '%s\n' '{"id":"k","messages":[{"role":"user","content":"hello"}]}' > "$T/one.jsonl"
expect key-missing 2 "$DG" --requests "$T/one.jsonl" --base-url https://api.example.invalid/v1 &&
	stderr_has key-missing 'no API key: set OPENAI_API_KEY or give --api-key-file' && ok "no key for a remote server: exit 2 before any request"
expect key-file-missing 2 "$DG" --requests "$T/one.jsonl" --base-url "$URL" --api-key-file "$T/nokey" &&
	stderr_has key-file-missing "--api-key-file $T/nokey: cannot open" && ok "--api-key-file that does not exist: exit 2"
: > "$T/emptykey"
expect key-file-empty 2 "$DG" --requests "$T/one.jsonl" --base-url "$URL" --api-key-file "$T/emptykey" &&
	stderr_has key-file-empty 'empty' && ok "--api-key-file that is empty: exit 2"
if expect key-local 0 "$DG" --requests "$T/one.jsonl" --base-url "$URL" -o "$T/one.out" --price 2.5,10 --stats "$T/one.stats"; then
	grep -q '"auth": false' "$T/bad.log" && ok "no key for a server on this machine: requests go without Authorization" \
		|| notok key-local "an Authorization header was sent"
	# the fault server reports usage 11 prompt + 7 completion tokens: 11 * 2.5 + 7 * 10 = 97.5 dollars per million
	cost=$(jq '.cost_usd * 1e7 | round' "$T/one.stats")
	[ "$cost" = 975 ] && [ "$(jq -c '[.prompt_tokens, .completion_tokens, .requests, .complete]' "$T/one.stats")" = '[11,7,1,true]' ] &&
		stderr_has key-local 'cost \$0\.0001' && ok "--stats and --price: tokens from usage, cost 11 x 2.5 + 7 x 10 per million" ||
		notok price "stats $(jq -c . "$T/one.stats"), stderr $(tail -c 200 "$T/err")"
fi
expect bad-url 2 "$DG" --requests "$T/one.jsonl" --base-url "ftp://127.0.0.1/v1" && stderr_has bad-url 'only http:// and https://' && ok "a URL that is not http(s): exit 2"
expect bad-price 2 "$DG" --requests "$T/one.jsonl" --base-url "$URL" --price 3 && stderr_has bad-price 'expected IN,OUT' && ok "bad --price: exit 2"
expect bad-validate 2 "$DG" --requests "$T/one.jsonl" --base-url "$URL" --validate '.[' && stderr_has bad-validate '--validate: cannot compile' && ok "bad --validate filter: exit 2"
kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null

# Unreachable endpoint: a clear error, retries as configured, exit 1, quickly.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s%N)
if expect unreachable 1 "$DG" --requests "$T/one.jsonl" --base-url "http://127.0.0.1:$port/v1" --retries 2 --retry-base-ms 10 --stats "$T/u.json" &&
	stderr_has unreachable "connection error: (Couldn't connect to server|Could not connect)" && stderr_has unreachable 'gave up after 3 attempts' &&
	stderr_has unreachable 'incomplete: 0 of 1'; then
	ms=$(( ($(date +%s%N) - start) / 1000000 ))
	[ "$(jq .retries "$T/u.json")" = 2 ] && [ "$ms" -lt 3000 ] && ok "unreachable endpoint: 3 attempts, clear error, exit 1 in ${ms} ms" \
		|| notok unreachable "retries $(jq .retries "$T/u.json"), ${ms} ms"
fi

# The bank example spec end to end (fault server writing utterances), then ds-fmt with a tool-capable template.
start_server bank --mode gen --wrap --dup --faults 429,500
if expect bank 0 "$DG" "$ROOT/examples/bank/spec.json" --base-url "$URL" -n 40 -j 4 --retry-base-ms 5 -o "$T/bank.jsonl" --stats "$T/bank.stats"; then
	n=$(wc -l < "$T/bank.jsonl"); u=$(jq -r .id "$T/bank.jsonl" | sort -u | wc -l)
	langs=$(jq -r .lang "$T/bank.jsonl" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')
	negs=$(jq -r 'select(.negative) | .id' "$T/bank.jsonl" | wc -l)
	if [ "$n" = 40 ] && [ "$u" = 40 ] && [ "$langs" = "en=20 ru=20 " ] && [ "$negs" = 12 ]; then
		ok "bank spec: 40 records, unique ids, 20 en + 20 ru, 12 negatives (30%)"
	else notok bank "records $n, unique $u, langs $langs, negatives $negs"; fi
	if M=$(fixture qwen2_5); then
		if expect bank-dsfmt 0 "$BIN/ds-fmt" --model "$M" "$T/bank.jsonl"; then
			[ "$(wc -l < "$T/out")" = 40 ] && [ "$(jq -r 'select(.text | split("<|im_start|>assistant") | last | contains("<tool_call>")) | .intent' "$T/out" | wc -l)" = 28 ] &&
				ok "ds-fmt (Qwen2.5 template) accepts all 40; the 28 intents render as tool calls" || notok bank-dsfmt "$(head -c 300 "$T/out")"
		fi
	else
		skip bank-dsfmt "fixture qwen2_5 not found under $FIXTURES"
	fi
	# the same command again: nothing asked, nothing added
	before=$(attempts bank)
	if expect bank-rerun 0 "$DG" "$ROOT/examples/bank/spec.json" --base-url "$URL" -n 40 -o "$T/bank.jsonl"; then
		[ "$(attempts bank)" = "$before" ] && [ "$(wc -l < "$T/bank.jsonl")" = 40 ] && ok "rerun of a complete set: no request, no record added" \
			|| notok bank-rerun "$(( $(attempts bank) - before )) requests, $(wc -l < "$T/bank.jsonl") records"
	fi
	# another seed: the file's records are not this run's; refused before any request unless --force
	before=$(attempts bank); sum=$(md5sum < "$T/bank.jsonl")
	if expect bank-other-seed 2 "$DG" "$ROOT/examples/bank/spec.json" --base-url "$URL" -n 40 --seed 7 -o "$T/bank.jsonl" &&
		stderr_has bank-other-seed 'bank.jsonl: 40 of its 40 records have ids this run does not make .*--force'; then
		[ "$(attempts bank)" = "$before" ] && [ "$(md5sum < "$T/bank.jsonl")" = "$sum" ] &&
			ok "resume into another run's output: refused, no request, file untouched" || notok bank-other-seed "requests or file changed"
	fi
	if expect bank-force 0 "$DG" "$ROOT/examples/bank/spec.json" --base-url "$URL" -n 4 --seed 7 --retry-base-ms 5 --force -o "$T/bank.jsonl"; then
		[ "$(wc -l < "$T/bank.jsonl")" = 44 ] && [ "$(head -40 "$T/bank.jsonl" | md5sum)" = "$sum" ] &&
			ok "--force: the other run's records kept, this run's added beside them" || notok bank-force "$(wc -l < "$T/bank.jsonl") lines"
	fi
fi
# standard output works too (no resume there), and the endpoint from $OPENAI_BASE_URL
if expect bank-stdout 0 env OPENAI_BASE_URL="$URL" "$DG" "$ROOT/examples/bank/spec.json" -n 6 --retry-base-ms 5; then
	[ "$(jq -c . "$T/out" | wc -l)" = 6 ] && ok "spec mode to standard output, endpoint from OPENAI_BASE_URL" || notok bank-stdout "$(head -c 200 "$T/out")"
fi
# tool_call_format "string": arguments as JSON text, as the OpenAI API returns them; ds-fmt takes that too
jq '.tool_call_format = "string"' "$ROOT/tests/ref/dsgen_test_spec.json" > "$T/strargs.json"
if expect args-string 0 "$DG" "$T/strargs.json" --base-url "$URL" -n 8 --retry-base-ms 5 -o "$T/strargs.jsonl"; then
	kinds=$(jq -r '.messages[2].tool_calls // [] | .[].function.arguments | type' "$T/strargs.jsonl" | sort -u | tr '\n' ' ')
	if [ "$kinds" = "string " ] && M=$(fixture qwen2_5) && "$BIN/ds-fmt" --model "$M" "$T/strargs.jsonl" > "$T/strargs.txt" 2>"$T/err"; then
		ok "tool_call_format string: arguments as JSON text, accepted by ds-fmt"
	else notok args-string "argument kinds: $kinds; $(head -c 200 "$T/err")"; fi
fi
# An integer argument past 2^53 (a 19-digit account number) reaches the record
# whole, as an object and as JSON text, as json.loads reads the reply; jq 1.6
# alone would round it (1000000000123456791 -> 1000000000123456800).
python3 - "$ROOT/tests/ref/dsgen_test_spec.json" "$T/bigint" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["tools"][1]["function"]["parameters"] = {"type": "object", "required": ["account"], "additionalProperties": False,
                                              "properties": {"account": {"type": "integer", "minimum": 10 ** 18}}}
spec["intents"][1]["examples"] = ["Block the card of account 1000000000000000001"]
json.dump(spec, open(sys.argv[2] + ".json", "w"))
json.dump(dict(spec, tool_call_format="string"), open(sys.argv[2] + "-str.json", "w"))
PY
for form in "" -str; do
	if expect "bigint$form" 0 "$DG" "$T/bigint$form.json" --base-url "$URL" -n 8 --retry-base-ms 5 -o "$T/bigint$form.jsonl"; then
		if python3 - "$T/bigint$form.jsonl" <<'PY'; then ok "integer argument past 2^53 kept whole (tool_call_format $([ -n "$form" ] && echo string || echo object))"; else notok "bigint$form" "$(head -c 300 "$T/bigint$form.jsonl")"; fi
import json, sys
accounts = []
for line in open(sys.argv[1]):
    for call in json.loads(line)["messages"][2].get("tool_calls", []):
        if call["function"]["name"] != "block_card":
            continue
        a = call["function"]["arguments"]
        accounts.append((json.loads(a) if isinstance(a, str) else a)["account"])
# the fault server writes 10**18 + 246913579 + 2n: odd, and no double is odd up there
sys.exit(0 if accounts and all(type(x) is int and x % 2 == 1 and 10 ** 18 < x < 10 ** 18 + 10 ** 9 for x in accounts) else 1)
PY
	fi
done
# --requests: two ids a double cannot tell apart stay two, whole, and a rerun finds both done
printf '%s\n' '{"id": 1234567890123456789, "messages": [{"role": "user", "content": "a"}], "n": 9007199254740993}' \
	'{"id": 1234567890123456791, "messages": [{"role": "user", "content": "b"}], "n": 1.0}' > "$T/bigid.in"
if expect bigid 0 "$DG" --requests "$T/bigid.in" --base-url "$URL" --retry-base-ms 5 -o "$T/bigid.jsonl" &&
	expect bigid-rerun 0 "$DG" --requests "$T/bigid.in" --base-url "$URL" -o "$T/bigid.jsonl"; then
	got=$(python3 -c 'import json, sys; print(sorted((r["id"], r["n"]) for r in map(json.loads, open(sys.argv[1]))))' "$T/bigid.jsonl")
	[ "$got" = "[(1234567890123456789, 9007199254740993), (1234567890123456791, 1.0)]" ] &&
		stderr_has bigid-rerun '0 new, 2 already there' && ok "--requests: 19-digit ids and integers past 2^53 kept whole, resumed" ||
		notok bigid "$got; $(head -c 200 "$T/err")"
fi
kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null
finish
