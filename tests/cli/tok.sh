#!/usr/bin/env bash
# tok as a user runs it: encoding, the stream round trip, the show modes, and
# every kind of bad input (clear message, exit 2, no output file left behind).
. "$(dirname "$0")/lib.sh"
TOK=$BIN/tok
M=$(fixture qwen2_5) || { skip tok "fixture qwen2_5 not found under $FIXTURES"; finish; }

# A ChatML conversation; train covers the assistant content and its <|im_end|>.
record() { # record SYSTEM USER ASSISTANT -> one format-2 line
	python3 -c '
import json, sys
s, u, a = sys.argv[1:4]
pre = "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % (s, u)
learned = a + "<|im_end|>"
text = pre + learned + "\n"
start = len(pre.encode()); end = start + len(learned.encode())
print(json.dumps({"text": text, "train": [[start, end]], "id": 7}, ensure_ascii=False))' "$@"
}
record "You are a bank assistant." "Is my access active?" "Let me check that for you." > "$T/a.jsonl"
record "Ты банковский ассистент." "Мой доступ активен?" "Сейчас проверю 🔍" >> "$T/a.jsonl"
record "" "What is an account balance?" "The money in the account right now." >> "$T/a.jsonl"

# --help names every option, and the man page documents each of them.
if expect help 0 "$TOK" --help; then
	opts=$(grep -oE -- '--[a-z][a-z-]+' "$T/out" | sort -u)
	missing=$(for o in $opts; do grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$ROOT/man/tok.1" || echo "$o"; done)
	if [ -z "$opts" ]; then notok help "no options in --help"
	elif [ -n "$missing" ]; then notok help "man/tok.1 lacks: $missing"
	else ok "help lists $(echo $opts | wc -w) options, all in man/tok.1"; fi
fi

# Encoding to a stream: a valid zstd file whose records match --jsonl.
if expect encode 0 "$TOK" --model "$M" -o "$T/a.tok.zst" "$T/a.jsonl"; then
	if zstd -q -t "$T/a.tok.zst" && [ ! -s "$T/out" ]; then ok "encode: -o writes a valid zstd stream"
	else notok encode "zstd -t fails on the output, or stdout was written"; fi
fi

# Labels: exactly the tokens inside the train span are learned, with their ids.
if expect labels 0 "$TOK" --model "$M" --jsonl --offsets "$T/a.jsonl"; then
	python3 - "$T/a.jsonl" "$T/out" <<'PY' && ok "labels: exactly the span's tokens learned, labels equal ids" || notok labels "see above"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
outs = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert len(recs) == len(outs) == 3, (len(recs), len(outs))
for r, o in zip(recs, outs):
    (a, b), = r["train"]
    assert set(o) == {"ids", "labels", "offsets"}, set(o)
    got = [(s, e) for (s, e), l in zip(o["offsets"], o["labels"]) if l != -100]
    assert got[0][0] == a and got[-1][1] == b, (got, a, b)
    for (s, e), i, l in zip(o["offsets"], o["ids"], o["labels"]):
        inside = s < b and e > a
        assert (l == i) if inside else (l == -100), (s, e, i, l)
    text = r["text"].encode()
    assert text[o["offsets"][-1][0]:o["offsets"][-1][1]] == b"\n"
    assert o["labels"][-2] == o["ids"][-2] == 151645, "<|im_end|> (151645) is learned"
PY
fi

# The stream read back: --jsonl equals the encoder's --jsonl (without offsets).
"$TOK" --model "$M" --jsonl "$T/a.jsonl" > "$T/direct.jsonl" 2>/dev/null
if expect stream-jsonl 0 "$TOK" --jsonl "$T/a.tok.zst"; then
	cmp -s "$T/out" "$T/direct.jsonl" && ok "stream read back equals direct --jsonl" \
		|| notok stream-jsonl "records differ after the round trip through the stream"
fi
if expect stream-stdin 0 "$TOK" --jsonl < "$T/a.tok.zst"; then
	cmp -s "$T/out" "$T/direct.jsonl" && ok "stream read from standard input" \
		|| notok stream-stdin "records differ when read from a pipe"
fi

# --decode gives back the texts.
if expect decode 0 "$TOK" --model "$M" --decode "$T/a.tok.zst"; then
	if diff <(jq -c '{text}' "$T/a.jsonl") <(jq -c . "$T/out") >/dev/null; then ok "decode returns the original texts"
	else notok decode "decoded text differs: $(head -c 300 "$T/out")"; fi
fi

# --stats on a stream, and while encoding.
if expect stats 0 "$TOK" --stats "$T/a.tok.zst" && stderr_has stats 'records: 3 in, 3 written' &&
	stderr_has stats 'learned [0-9]+ \([0-9.]+%\)' && stderr_has stats 'length histogram'; then
	ok "stats of a stream"
else
	unreported stats
fi

# --explain marks learned runs and token boundaries.
if expect explain 0 "$TOK" --model "$M" --explain --color never "$T/a.jsonl"; then
	if grep -qF '|[[Let| me| check| that| for| you|.|<|im_end|>]]|\n' "$T/out"; then ok "explain shows tokens and learned runs"
	else notok explain "unexpected: $(head -c 300 "$T/out")"; fi
fi
if expect explain-stream 0 "$TOK" --model "$M" --explain --color never "$T/a.tok.zst"; then
	grep -qF '[[Let| me|' "$T/out" && ok "explain a stream" || notok explain-stream "$(head -c 300 "$T/out")"
fi

# --max-len policies.
if expect maxlen-drop 0 "$TOK" --model "$M" --max-len 30 --jsonl "$T/a.jsonl"; then
	n=$(wc -l < "$T/out")
	[ "$n" -lt 3 ] && stderr_has maxlen-drop 'longer than --max-len 30 were dropped' && ok "max-len drop: $n of 3 kept, counted" || unreported maxlen-drop
fi
printf '{"text":"hello world, this is a longer text","train":[[0,5],[26,34]]}\n' > "$T/long.jsonl"
if expect maxlen-truncate 0 "$TOK" --model "$M" --max-len 3 --overflow truncate --jsonl "$T/long.jsonl"; then
	[ "$(jq -c .labels "$T/out")" = "[14990,-100,-100]" ] && stderr_has maxlen-truncate '1 records were truncated to --max-len 3' &&
		ok "max-len truncate keeps the first tokens and their labels" || unreported maxlen-truncate
fi
expect maxlen-error 2 "$TOK" --model "$M" --max-len 30 --overflow error --jsonl "$T/a.jsonl" &&
	stderr_has maxlen-error ':1: [0-9]+ tokens, longer than --max-len 30' && ok "max-len error names the line" || unreported maxlen-error

# A record with nothing to learn is an error unless --drop-empty.
printf '{"text":"hello","train":[]}\n' > "$T/empty.jsonl"
expect empty 2 "$TOK" --model "$M" "$T/empty.jsonl" && stderr_has empty ':1: no token is learned' && ok "empty record is an error" || unreported empty
expect drop-empty 0 "$TOK" --model "$M" --drop-empty --jsonl "$T/empty.jsonl" &&
	[ ! -s "$T/out" ] && stderr_has drop-empty '1 records with no learned token were dropped' && ok "--drop-empty drops and counts" || unreported drop-empty

# A doubled BOS is reported: two in a row, or a second one where the tokenizer
# itself would add the BOS (Llama 3.1); a BOS that marks turns may repeat.
if L=$(fixture llama3) && L31=$(fixture llama3_1); then
	printf '{"text":"<|begin_of_text|><|begin_of_text|>hi","train":[[34,36]]}\n' > "$T/bos.jsonl"
	expect multi-bos 0 "$TOK" --model "$L" --jsonl "$T/bos.jsonl" && stderr_has multi-bos 'doubled BOS token \(first at line 1\)' &&
		ok "two BOS in a row are reported" || unreported multi-bos
	printf '{"text":"<|begin_of_text|>a<|begin_of_text|>hi","train":[[35,37]]}\n' > "$T/bos2.jsonl"
	expect multi-bos-start 0 "$TOK" --model "$L31" --jsonl "$T/bos2.jsonl" && stderr_has multi-bos-start 'doubled BOS' &&
		ok "a second start-only BOS is reported" || unreported multi-bos-start
	expect single-bos 0 "$TOK" --model "$L31" --jsonl "$T/a.jsonl" && ! grep -q BOS "$T/err" &&
		ok "no BOS warning without a doubled BOS" || unreported single-bos
fi

# Bad input: a clear message with the line, exit 2, and no output file.
bad() { # bad NAME CONTENT PATTERN
	printf '%b' "$2" > "$T/bad.jsonl"
	rm -f "$T/bad.out"
	if expect "$1" 2 "$TOK" --model "$M" -o "$T/bad.out" "$T/bad.jsonl" && stderr_has "$1" "$3"; then
		if [ -e "$T/bad.out" ] || ls -a "$T" | grep -q '^\.bad\.out'; then notok "$1" "an output file was left behind"
		else ok "bad input: $1"; fi
	fi
}
good='{"text":"hi there","train":[[0,2]]}\n'
bad not-json "$good$good{\"text\":\n" 'bad\.jsonl:3: '
bad not-object "$good[1,2]\n" 'bad\.jsonl:2: .*object'
bad missing-text '{"train":[[0,1]]}\n' 'bad\.jsonl:1: missing key "text"'
bad text-not-string '{"text":5,"train":[]}\n' 'bad\.jsonl:1: key "text": expected a string'
bad missing-train '{"text":"hi"}\n' 'bad\.jsonl:1: missing key "train"'
bad span-out-of-range "$good{\"text\":\"hi\",\"train\":[[0,9]]}\n" 'bad\.jsonl:2: key "train": span 0'
bad span-backwards '{"text":"hello","train":[[3,1]]}\n' 'bad\.jsonl:1: key "train": span 0 \[3,1\): start after end'
bad span-not-pair '{"text":"hello","train":[[1]]}\n' 'bad\.jsonl:1: key "train": span 0'
bad span-fraction '{"text":"hello","train":[[0.5,2]]}\n' 'bad\.jsonl:1: key "train": span 0'
bad span-splits-utf8 '{"text":"при","train":[[1,4]]}\n' 'bad\.jsonl:1: key "train": span 0 \[1,4\): not on a UTF-8 character boundary'

# --skip-bad goes on past malformed records and counts them.
printf '%b' "$good{oops\n$good" > "$T/skip.jsonl"
expect skip-bad 0 "$TOK" --model "$M" --skip-bad --jsonl "$T/skip.jsonl" && [ "$(wc -l < "$T/out")" -eq 2 ] &&
	stderr_has skip-bad '1 malformed records were skipped' && ok "--skip-bad skips and counts" || unreported skip-bad

# Tokenizer files that cannot be used.
mkdir -p "$T/wp"; echo '{"model":{"type":"WordPiece","vocab":{}}}' > "$T/wp/tokenizer.json"
expect unknown-model 2 "$TOK" --model "$T/wp" "$T/a.jsonl" && stderr_has unknown-model 'WordPiece' && ok "unknown tokenizer model type is an error" || unreported unknown-model
expect no-model 2 "$TOK" "$T/a.jsonl" && stderr_has no-model '--model is required' && ok "encoding without --model is an error" || unreported no-model
expect missing-model 2 "$TOK" --model "$T/nowhere" "$T/a.jsonl" && stderr_has missing-model 'nowhere' && ok "a missing model is named" || unreported missing-model

# Usage errors.
expect bad-option 2 "$TOK" --frobnicate && stderr_has bad-option "frobnicate" && ok "unknown option" || unreported bad-option
expect bad-number 2 "$TOK" --model "$M" --max-len 12x && stderr_has bad-number "max-len" && ok "bad number" || unreported bad-number
expect bad-choice 2 "$TOK" --model "$M" --overflow sometimes && stderr_has bad-choice "drop\|truncate\|error" && ok "bad choice" || unreported bad-choice

# A stream that is not one.
printf 'garbage that is not zstd' > "$T/junk.tok.zst"
expect foreign-stream 2 "$TOK" --stats "$T/junk.tok.zst" && stderr_has foreign-stream 'junk\.tok\.zst' && ok "a foreign file is refused" || unreported foreign-stream
head -c 40 "$T/a.tok.zst" > "$T/cut.tok.zst"
expect truncated-stream 2 "$TOK" --jsonl "$T/cut.tok.zst" && stderr_has truncated-stream 'cut\.tok\.zst' && ok "a truncated stream is refused" || unreported truncated-stream

# A stream decoded with another tokenizer is refused.
if L=$(fixture llama3); then
	expect wrong-tokenizer 2 "$TOK" --model "$L" --decode "$T/a.tok.zst" && stderr_has wrong-tokenizer 'different tokenizer' &&
		ok "decoding with another tokenizer is refused" || unreported wrong-tokenizer
fi
# SIGINT while reading: exit 130 and no output file, not even a temporary.
mkdir -p "$T/sig"
( cat "$T/a.jsonl"; sleep 3; cat "$T/a.jsonl" ) | "$TOK" --model "$M" -o "$T/sig/out.tok.zst" 2>"$T/sig.err" &
pid=$!
sleep 1.5
kill -INT $pid
wait $pid; rc=$?
if [ "$rc" -eq 130 ] && grep -q 'interrupted' "$T/sig.err" && [ -z "$(ls -A "$T/sig")" ]; then ok "SIGINT: exit 130, no output left"
else notok sigint "status $rc, folder: $(ls -A "$T/sig"), stderr: $(head -c 200 "$T/sig.err")"; fi
finish
