#!/usr/bin/env bash
# ds-fmt as a user runs it: each input form, the options, the learned spans of
# real templates (assistant content + end-of-turn marker, nothing else), the
# hand-off to tok, and every kind of bad input (clear message with the line,
# exit 2, no output file left behind).
. "$(dirname "$0")/lib.sh"
DS=$BIN/ds-fmt
TOK=$BIN/tok
[ -x "$DS" ] || { skip ds-fmt "bin/ds-fmt is not built (lib/template missing?)"; finish; }
Q=$(fixture qwen2_5) || { skip ds-fmt "fixture qwen2_5 not found under $FIXTURES"; finish; }

# --help names every option, and the man page documents each of them, with
# the same descriptions opt_man makes from the option table.
if expect help 0 "$DS" --help; then
	opts=$(grep -oE -- '--[a-z][a-z-]+' "$T/out" | sort -u)
	missing=$(for o in $opts; do grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$ROOT/man/ds-fmt.1" || echo "$o"; done)
	if [ -z "$opts" ]; then notok help "no options in --help"
	elif [ -n "$missing" ]; then notok help "man/ds-fmt.1 lacks: $missing"
	else ok "help lists $(echo $opts | wc -w) options, all in man/ds-fmt.1"; fi
fi
if expect help-man 0 "$DS" --help-man; then
	if python3 - "$T/out" "$ROOT/man/ds-fmt.1" <<'PY'; then ok "man/ds-fmt.1 OPTIONS is what opt_man writes"; else notok help-man "regenerate: bin/ds-fmt --help-man"; fi
import sys
gen, man = open(sys.argv[1]).read(), open(sys.argv[2]).read()
sys.exit(0 if gen.strip() in man else 1)
PY
fi

# spans_are NAME FILE MARKER: every record's spans are exactly its assistant
# messages' contents, each followed by MARKER (the checker rebuilds the
# conversation from the input file given as $4).
spans_are() {
	python3 - "$2" "$3" "$4" "${5:-all}" <<'PY'
import json, sys
out, marker, inp, which = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
outs = [json.loads(l) for l in open(out, encoding="utf-8")]
ins = [json.loads(l) for l in open(inp, encoding="utf-8")]
assert len(outs) == len(ins), (len(outs), len(ins))
for o, i in zip(outs, ins):
    text = o["text"].encode()
    got = [text[a:b].decode() for a, b in o["train"]]
    want = [m["content"] + marker for m in i["messages"] if m["role"] == "assistant"]
    if which == "last":
        want = want[-1:]
    assert got == want, (got, want)
    for a, b in o["train"]:
        assert 0 <= a < b <= len(text)
PY
}

cat > "$T/chat.jsonl" <<'J'
{"messages":[{"role":"system","content":"You are a bank assistant."},{"role":"user","content":"Is my access active?"},{"role":"assistant","content":"Let me check that for you."}],"id":1}
{"messages":[{"role":"user","content":"Мой доступ активен?"},{"role":"assistant","content":"Сейчас проверю 🔍"},{"role":"user","content":"Спасибо"},{"role":"assistant","content":"Пожалуйста!"}],"id":2}
{"messages":[{"role":"user","content":"What is an account balance?"},{"role":"assistant","content":"The money in the account right now."}],"id":3,"meta":{"src":"x"}}
J

# Spans on the real templates: content + end-of-turn marker, nothing else.
for fx in qwen2_5:'<|im_end|>' llama3_1:'<|eot_id|>' gemma3:'<end_of_turn>'; do
	name=${fx%%:*} marker=${fx#*:}
	M=$(fixture "$name") || { skip "spans-$name" "fixture $name missing"; continue; }
	if expect "spans-$name" 0 "$DS" --model "$M" "$T/chat.jsonl"; then
		if spans_are "spans-$name" "$T/out" "$marker" "$T/chat.jsonl" 2>"$T/py.err"; then ok "spans on $name: assistant content + $marker"
		else notok "spans-$name" "$(tail -c 400 "$T/py.err")"; fi
	fi
	if expect "last-$name" 0 "$DS" --model "$M" --train-turns last "$T/chat.jsonl"; then
		spans_are "last-$name" "$T/out" "$marker" "$T/chat.jsonl" last 2>"$T/py.err" && ok "--train-turns last on $name" ||
			notok "last-$name" "$(tail -c 400 "$T/py.err")"
	fi
done

# Other keys pass through; the input's own keys are gone.
if expect passthrough 0 "$DS" --model "$Q" "$T/chat.jsonl"; then
	[ "$(jq -c '[.id, .meta, has("messages")]' "$T/out" | tr '\n' ' ')" = '[1,null,false] [2,null,false] [3,{"src":"x"},false] ' ] &&
		ok "other keys pass through" || notok passthrough "$(jq -c '[.id,.meta]' "$T/out" | tr '\n' ' ')"
fi
# An input key named as one of the output's own ("text", "train", and
# "expected" when ds-fmt writes one) does not replace it; it is dropped.
printf '%s\n' '{"text":"stale","train":[[0,1]],"expected":"kept","id":4,"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}' > "$T/own-keys.jsonl"
if expect own-keys 0 "$DS" --model "$Q" "$T/own-keys.jsonl"; then
	[ "$(jq -c '[(.text | test("Hello!<\\|im_end\\|>")), (.train | length), .expected, .id, keys_unsorted]' "$T/out")" = \
		'[true,1,"kept",4,["text","train","expected","id"]]' ] &&
		ok "input text/train do not replace the output's" || notok own-keys "$(head -c 300 "$T/out")"
fi
if expect own-keys-agp 0 "$DS" --model "$Q" --add-generation-prompt "$T/own-keys.jsonl"; then
	[ "$(jq -c '[.expected.content, .train, .id, keys_unsorted]' "$T/out")" = '["Hello!",[],4,["text","train","expected","id"]]' ] &&
		ok "input expected does not replace --add-generation-prompt's" || notok own-keys-agp "$(head -c 300 "$T/out")"
fi

# Alpaca and ShareGPT give the same text as the messages they stand for.
printf '%s\n' '{"instruction":"Translate to English","input":"кот","output":"cat"}' > "$T/alpaca.jsonl"
printf '%s\n' '{"messages":[{"role":"user","content":"Translate to English\nкот"},{"role":"assistant","content":"cat"}]}' > "$T/alpaca-as.jsonl"
"$DS" --model "$Q" "$T/alpaca-as.jsonl" > "$T/want" 2>/dev/null
if expect alpaca 0 "$DS" --model "$Q" "$T/alpaca.jsonl"; then
	cmp -s "$T/out" "$T/want" && ok "alpaca record = its messages" || notok alpaca "$(head -c 300 "$T/out")"
fi
expect alpaca-forced 0 "$DS" --model "$Q" --input-format alpaca "$T/alpaca.jsonl" && cmp -s "$T/out" "$T/want" &&
	ok "--input-format alpaca" || unreported alpaca-forced
expect wrong-format 2 "$DS" --model "$Q" --input-format sharegpt "$T/alpaca.jsonl" && stderr_has wrong-format 'alpaca\.jsonl:1: .*conversations' &&
	ok "a forced format that does not fit is an error" || unreported wrong-format
printf '%s\n' '{"system":"Be brief.","conversations":[{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello!"}],"id":9}' > "$T/sharegpt.jsonl"
printf '%s\n' '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}],"id":9}' > "$T/sharegpt-as.jsonl"
"$DS" --model "$Q" "$T/sharegpt-as.jsonl" > "$T/want" 2>/dev/null
if expect sharegpt 0 "$DS" --model "$Q" "$T/sharegpt.jsonl"; then
	cmp -s "$T/out" "$T/want" && ok "sharegpt record = its messages" || notok sharegpt "$(head -c 300 "$T/out")"
fi

# --jq maps any shape; a filter that does not compile is named.
printf '%s\n' '{"q":"Is my access active?","a":"Let me check."}' > "$T/qa.jsonl"
if expect jq 0 "$DS" --model "$Q" --jq '{messages:[{role:"user",content:.q},{role:"assistant",content:.a}]}' "$T/qa.jsonl"; then
	jq -e '.text | contains("Is my access active?")' "$T/out" >/dev/null && ok "--jq maps a record" || notok jq "$(head -c 300 "$T/out")"
fi
expect jq-bad 2 "$DS" --model "$Q" --jq '{messages:[' "$T/qa.jsonl" && stderr_has jq-bad "--jq: cannot compile '\{messages:\['" &&
	ok "--jq compile error names the filter" || unreported jq-bad
expect jq-not-object 2 "$DS" --model "$Q" --jq '.q' "$T/qa.jsonl" && stderr_has jq-not-object 'qa\.jsonl:1: .*not an object' &&
	ok "--jq giving a non-object names the line" || unreported jq-not-object

# --system fills in a missing system prompt only.
if expect system 0 "$DS" --model "$Q" --system "DEFAULT PROMPT" "$T/chat.jsonl"; then
	[ "$(jq -c '.text | contains("DEFAULT PROMPT")' "$T/out" | tr '\n' ' ')" = 'false true true ' ] &&
		ok "--system only where a record has none" || notok system "$(jq -c '.text | contains("DEFAULT PROMPT")' "$T/out" | tr '\n' ' ')"
fi
# a --system that is not UTF-8 (a Latin-1 terminal) is refused before any record, not written into the JSON
expect system-latin1 2 "$DS" --model "$Q" --system "$(printf 'caf\351')" "$T/chat.jsonl" &&
	stderr_has system-latin1 '^ds-fmt: --system: not valid UTF-8 at byte 3$' &&
	ok "--system that is not UTF-8 is refused" || unreported system-latin1

# --tools gives a default tool list; tool calls as object or JSON text render
# the same, and the learned span holds the whole <tool_call> block.
cat > "$T/tools.json" <<'J'
[{"type":"function","function":{"name":"check_access","description":"Check the user's access","parameters":{"type":"object","properties":{"user":{"type":"string"}}}}}]
J
printf '%s\n' '{"messages":[{"role":"user","content":"Is my access active?"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"check_access","arguments":{"user":"Иван"}}}]},{"role":"tool","content":"active"},{"role":"assistant","content":"Yes, it is active."}]}' > "$T/call-obj.jsonl"
printf '%s\n' '{"messages":[{"role":"user","content":"Is my access active?"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"check_access","arguments":"{\"user\": \"Иван\"}"}}]},{"role":"tool","content":"active"},{"role":"assistant","content":"Yes, it is active."}]}' > "$T/call-str.jsonl"
if expect tools 0 "$DS" --model "$Q" --tools "$T/tools.json" "$T/call-obj.jsonl"; then
	cp "$T/out" "$T/call-obj.out"
	python3 - "$T/out" <<'PY' 2>"$T/py.err" && ok "--tools and a tool call: tools in the prompt, call learned whole" || notok tools "$(tail -c 400 "$T/py.err")"
import json, sys
o = json.loads(open(sys.argv[1], encoding="utf-8").read())
t = o["text"].encode()
assert b"check_access" in t[:t.index(b"<|im_start|>user")], "tools in the system prompt"
spans = [t[a:b].decode() for a, b in o["train"]]
assert spans[0].startswith("<tool_call>\n") and spans[0].endswith("</tool_call><|im_end|>"), spans
assert json.loads(spans[0].split("\n")[1])["arguments"] == {"user": "Иван"}, spans
assert spans[1] == "Yes, it is active.<|im_end|>", spans
PY
fi
if expect tools-str 0 "$DS" --model "$Q" --tools "$T/tools.json" "$T/call-str.jsonl"; then
	cmp -s "$T/out" "$T/call-obj.out" && ok "arguments as JSON text = as an object" || notok tools-str "outputs differ"
fi
# Integers json.loads keeps whole: up to 64 bits printed as written (a double
# would round them), past 64 bits refused where the template would print them,
# passed through as jq writes them elsewhere.
printf '%s\n' '{"id":123456789012345678901,"messages":[{"role":"user","content":"Order?"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"check_access","arguments":{"order":1234567890123456789,"floor":-9223372036854775808,"price":10.0}}}]},{"role":"tool","content":"ok"},{"role":"assistant","content":"Done."}]}' > "$T/ints.jsonl"
if expect long-integers 0 "$DS" --model "$Q" "$T/ints.jsonl"; then
	grep -q '{\\"order\\": 1234567890123456789, \\"floor\\": -9223372036854775808, \\"price\\": 10.0}' "$T/out" &&
		grep -q '"id":123456789012345680000' "$T/out" && ok "integers of 19 digits printed whole; a longer id passed through as jq writes it" ||
		notok long-integers "$(head -c 600 "$T/out")"
fi
printf '%s\n' '[{"type":"function","function":{"name":"f","parameters":{"type":"object","maximum":123456789012345678901}}}]' > "$T/tools-long.json"
expect tools-long 2 "$DS" --model "$Q" --tools "$T/tools-long.json" "$T/chat.jsonl" && stderr_has tools-long 'tools-long\.json: an integer of more than 19 digits' &&
	ok "--tools with an integer past 64 bits is refused" || unreported tools-long

# --add-generation-prompt: the final answer becomes "expected", nothing is learned.
if expect agp 0 "$DS" --model "$Q" --add-generation-prompt "$T/chat.jsonl"; then
	python3 - "$T/out" <<'PY' 2>"$T/py.err" && ok "--add-generation-prompt: prompt, expected, no spans" || notok agp "$(tail -c 400 "$T/py.err")"
import json, sys
for l in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(l)
    assert o["train"] == [] and o["expected"]["role"] == "assistant", o
    assert o["text"].endswith("<|im_start|>assistant\n"), o["text"][-40:]
    assert o["expected"]["content"] not in o["text"], o
PY
fi

# --var passes template variables (Qwen3's enable_thinking).
if Q3=$(fixture qwen3); then
	if expect var 0 "$DS" --model "$Q3" --add-generation-prompt --var enable_thinking=false "$T/chat.jsonl"; then
		jq -e '.text | endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")' "$T/out" >/dev/null 2>&1 && head -1 "$T/out" | jq -e . >/dev/null &&
			ok "--var enable_thinking=false reaches the template" || notok var "$(head -c 300 "$T/out")"
	fi
fi
expect var-bad 2 "$DS" --model "$Q" --var enable_thinking=nope "$T/chat.jsonl" && stderr_has var-bad 'enable_thinking=nope' &&
	ok "--var with a value that is not JSON" || unreported var-bad

# Built-in templates and a template file.
if L=$(fixture llama3_1); then
	if expect builtin-llama3 0 "$DS" --model "$L" --template llama3 "$T/chat.jsonl"; then
		spans_are builtin-llama3 "$T/out" '<|eot_id|>' "$T/chat.jsonl" 2>"$T/py.err" && ok "built-in llama3 template" ||
			notok builtin-llama3 "$(tail -c 300 "$T/py.err")"
	fi
fi
if G=$(fixture gemma3); then
	if expect builtin-gemma 0 "$DS" --model "$G" --template gemma "$T/chat.jsonl"; then
		spans_are builtin-gemma "$T/out" '<end_of_turn>' "$T/chat.jsonl" 2>"$T/py.err" && ok "built-in gemma template" ||
			notok builtin-gemma "$(tail -c 300 "$T/py.err")"
	fi
fi
expect builtin-chatml 0 "$DS" --model "$Q" --template chatml "$T/chat.jsonl" && spans_are builtin-chatml "$T/out" '<|im_end|>' "$T/chat.jsonl" &&
	ok "built-in chatml template" || unreported builtin-chatml
printf '%s' "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}" > "$T/mine.jinja"
expect template-file 0 "$DS" --model "$Q" --template "$T/mine.jinja" "$T/chat.jsonl" &&
	[ "$(head -1 "$T/out" | jq -r .text)" = "system: You are a bank assistant.<|im_end|>user: Is my access active?<|im_end|>assistant: Let me check that for you.<|im_end|>" ] &&
	spans_are template-file "$T/out" '<|im_end|>' "$T/chat.jsonl" &&
	ok "--template FILE (it ignores add_generation_prompt: no header is learned)" || unreported template-file
expect template-unknown 2 "$DS" --model "$Q" --template vicuna "$T/chat.jsonl" && stderr_has template-unknown 'vicuna' &&
	ok "unknown built-in template" || unreported template-unknown
# jinja2 prints a generator as its address: refused, naming the record and the template's line
printf '%s' "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}
{{ messages|map(attribute='role') }}" > "$T/gen-print.jinja"
expect template-generator 2 "$DS" --model "$Q" --template "$T/gen-print.jinja" -o "$T/gen-print.out" "$T/chat.jsonl" &&
	stderr_has template-generator 'chat\.jsonl:1: .*gen-print\.jinja:2: printing a generator' && [ ! -e "$T/gen-print.out" ] &&
	ok "a template printing a generator is refused with its line, no output" || unreported template-generator

# A list of named templates: "tool_use" when tools are given, else "default";
# chat_template.jinja in the folder wins over tokenizer_config.json.
mkdir -p "$T/multi"; cp "$Q/tokenizer.json" "$T/multi/"
python3 - "$Q/tokenizer_config.json" "$T/multi/tokenizer_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["chat_template"] = [{"name": "default", "template": "D:{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"},
                      {"name": "tool_use", "template": "T:{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"}]
json.dump(c, open(sys.argv[2], "w"))
PY
printf '%s\n' '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}' \
	'{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}],"tools":[]}' > "$T/two.jsonl"
expect template-list 0 "$DS" --model "$T/multi" "$T/two.jsonl" &&
	[ "$(jq -r .text "$T/out" | tr '\n' ' ')" = 'D:u<|im_end|>a<|im_end|> T:u<|im_end|>a<|im_end|> ' ] &&
	ok "template list: default, or tool_use with tools" || unreported template-list
# Only "tool_use": records with tools use it, one without is refused (transformers raises there).
mkdir -p "$T/tooluse"; cp "$Q/tokenizer.json" "$T/tooluse/"
python3 - "$T/multi/tokenizer_config.json" "$T/tooluse/tokenizer_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["chat_template"] = c["chat_template"][1:]
json.dump(c, open(sys.argv[2], "w"))
PY
tail -1 "$T/two.jsonl" > "$T/tools-only.jsonl"
expect template-tool-use 0 "$DS" --model "$T/tooluse" "$T/tools-only.jsonl" &&
	[ "$(jq -r .text "$T/out")" = 'T:u<|im_end|>a<|im_end|>' ] &&
	expect template-no-default 2 "$DS" --model "$T/tooluse" -o "$T/none.jsonl" "$T/two.jsonl" &&
	stderr_has template-no-default 'two.jsonl:1: .*no "default", only "tool_use"' && [ ! -e "$T/none.jsonl" ] &&
	ok "template list with only tool_use: records with tools, others refused" || unreported template-tool-use
printf '%s' 'J:{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}' > "$T/multi/chat_template.jinja"
expect template-jinja 0 "$DS" --model "$T/multi" "$T/two.jsonl" && [ "$(head -1 "$T/out" | jq -r .text)" = 'J:u<|im_end|>a<|im_end|>' ] &&
	ok "chat_template.jinja wins" || unreported template-jinja

# End-of-turn markers come from tokenizer.json's added_tokens, read without
# loading the tokenizer; a repeated key means its last value (as jq and HF's
# tokenizers read it), also when the repeat is written with escapes far after
# the first, or only the first has the marker.
mkdir -p "$T/rep"
python3 - "$T/rep" <<'PY'
import json, sys
d = sys.argv[1]
json.dump({"chat_template": "{% for m in messages %}{{ m.content }}<|end|>{% endfor %}"}, open(d + "/tokenizer_config.json", "w"))
first = json.dumps([{"id": 1, "content": "<|other|>", "special": True}])
last = json.dumps([{"id": 2, "content": "<|end|>", "special": True}])
vocab = json.dumps({"tok%d" % i: i for i in range(20000)}, indent=2)
open(d + "/tokenizer.json", "w").write('{"added_tokens": %s, "model": {"type": "BPE", "vocab": %s, "merges": []},\n'
                                       ' "added\\u005ftokens": %s}\n' % (first, vocab, last))
PY
printf '%s\n' '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}' > "$T/rep.jsonl"
expect added-tokens-repeated 0 "$DS" --model "$T/rep" "$T/rep.jsonl" &&
	[ "$(jq -c .train "$T/out")" = '[[8,16]]' ] &&
	sed -i 's/"added\\u005ftokens"/"other_key"/' "$T/rep/tokenizer.json" &&
	expect added-tokens-first 2 "$DS" --model "$T/rep" "$T/rep.jsonl" && stderr_has added-tokens-first 'no end-of-turn marker' &&
	ok "added_tokens repeated (escaped, after a large vocab): the last one's markers" || unreported added-tokens-repeated
# The list is parsed from its start, its end found by the parse: the key
# written in the list itself (a token "added_tokens") is still one list, a
# null list is none, and a list not followed by ',' or '}' is not read.
mkdir -p "$T/rep2"; cp "$T/rep/tokenizer_config.json" "$T/rep2/"
python3 - "$T/rep2" <<'PY'
import json, sys
d = sys.argv[1]
tokens = json.dumps([{"id": 1, "content": "added_tokens", "special": False}, {"id": 2, "content": "<|end|>", "special": True}])
open(d + "/tokenizer.json", "w").write('{"version": "1.0", "added_tokens": %s , "model": {"type": "BPE", "vocab": {}, "merges": []}}\n' % tokens)
open(d + "/null.json", "w").write('{"added_tokens": null, "model": {"type": "BPE", "vocab": {}, "merges": []}}\n')
open(d + "/broken.json", "w").write('{"added_tokens": %s x, "model": {"type": "BPE", "vocab": {}, "merges": []}}\n' % tokens)
PY
expect added-tokens-in-list 0 "$DS" --model "$T/rep2" "$T/rep.jsonl" && [ "$(jq -c .train "$T/out")" = '[[8,16]]' ] &&
	mv "$T/rep2/null.json" "$T/rep2/tokenizer.json" &&
	expect added-tokens-null 2 "$DS" --model "$T/rep2" "$T/rep.jsonl" && stderr_has added-tokens-null 'no end-of-turn marker' &&
	mv "$T/rep2/broken.json" "$T/rep2/tokenizer.json" &&
	expect added-tokens-broken 2 "$DS" --model "$T/rep2" "$T/rep.jsonl" && stderr_has added-tokens-broken 'tokenizer\.json' &&
	ok "added_tokens: the key inside the list, a null list, a list not followed by , or }" || unreported added-tokens-list

# tokenizer_config.json: the members ds-fmt reads are parsed alone, the rest
# (a large added_tokens_decoder here) only scanned past; a repeated member
# means its last value, also when its key is escaped. Broken text, or a member
# read that is not JSON, is an error naming the file and its line.
mkdir -p "$T/cfg"; cp "$Q/tokenizer.json" "$T/cfg/"
python3 - "$T/cfg/tokenizer_config.json" <<'PY'
import json, sys
dec = json.dumps({str(i): {"content": "<x%d>" % i, "special": False} for i in range(20000)}, indent=2)
first = json.dumps("F:{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
last = json.dumps("L:{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
open(sys.argv[1], "w").write('{"chat_template": %s, "added_tokens_decoder": %s,\n "eos_token": "<|im_end|>",\n'
                             ' "chat\\u005ftemplate": %s}\n' % (first, dec, last))
PY
printf '%s\n' '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}' > "$T/cfg.jsonl"
cp "$T/cfg/tokenizer_config.json" "$T/cfg/good.json"
expect config-members 0 "$DS" --model "$T/cfg" "$T/cfg.jsonl" && [ "$(jq -r .text "$T/out")" = 'L:u<|im_end|>a<|im_end|>' ] &&
	sed 's/^ "eos_token": "<|im_end|>",$/ "eos_token": <|im_end|>,/' "$T/cfg/good.json" > "$T/cfg/tokenizer_config.json" &&
	expect config-member-bad 2 "$DS" --model "$T/cfg" -o "$T/cfg-none.jsonl" "$T/cfg.jsonl" &&
	stderr_has config-member-bad 'tokenizer_config\.json: bad JSON: .* at line [0-9]+, column' && [ ! -e "$T/cfg-none.jsonl" ] &&
	sed 's/^  "19999": {$/  "19999" {/' "$T/cfg/good.json" > "$T/cfg/tokenizer_config.json" &&
	expect config-broken 2 "$DS" --model "$T/cfg" "$T/cfg.jsonl" && stderr_has config-broken 'tokenizer_config\.json: bad JSON: .* at line [0-9]+, column' &&
	ok "tokenizer_config.json: members read alone (the last of a repeat), broken text an error with its line" ||
	unreported config-members

# {% generation %} blocks: spans that agree pass, spans that do not are an error.
printf '%s' "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}{% endfor %}" > "$T/gen.jinja"
expect generation 0 "$DS" --model "$Q" --template "$T/gen.jinja" "$T/chat.jsonl" && spans_are generation "$T/out" '<|im_end|>' "$T/chat.jsonl" &&
	ok "{% generation %} blocks that agree" || unreported generation
printf '%s' "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}<|im_end|>{% else %}{{ m.content }}<|im_end|>{% endif %}{% endfor %}" > "$T/gen2.jinja"
expect generation-disagree 2 "$DS" --model "$Q" --template "$T/gen2.jinja" "$T/chat.jsonl" && stderr_has generation-disagree 'chat\.jsonl:1: .*generation' &&
	ok "{% generation %} blocks that disagree are an error" || unreported generation-disagree

# Piping into tok: accepted, and the end-of-turn token is learned.
if "$DS" --model "$Q" "$T/chat.jsonl" 2>"$T/err" | "$TOK" --model "$Q" --jsonl > "$T/tok.out" 2>>"$T/err"; then
	python3 - "$T/tok.out" <<'PY' 2>"$T/py.err" && ok "tok takes ds-fmt's output; <|im_end|> is learned" || notok tok "$(tail -c 300 "$T/py.err")"
import json, sys
for l in open(sys.argv[1]):
    o = json.loads(l)
    learned = [i for i, lab in zip(o["ids"], o["labels"]) if lab != -100]
    assert learned and learned[-1] == 151645, learned[-5:]
    assert 151644 not in learned, "<|im_start|> is never learned"
PY
else notok tok "pipeline failed: $(head -c 300 "$T/err")"; fi

# Bad input: a clear message with the line, exit 2, and no output file.
bad() { # bad NAME CONTENT PATTERN [OPTIONS...]
	local name=$1 content=$2 pat=$3; shift 3
	printf '%b' "$content" > "$T/bad.jsonl"
	rm -f "$T/bad.out"
	if expect "$name" 2 "$DS" --model "$Q" "$@" -o "$T/bad.out" "$T/bad.jsonl" && stderr_has "$name" "$pat"; then
		if [ -e "$T/bad.out" ] || ls -a "$T" | grep -q '^\.bad\.out'; then notok "$name" "an output file was left behind"
		else ok "bad input: $name"; fi
	fi
}
good='{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
bad not-json "$good{\"messages\":\n" 'bad\.jsonl:2: '
bad unknown-role "$good$good{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n" 'bad\.jsonl:3: message 0: unknown role "robot"'
bad assistant-first '{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}\n' 'bad\.jsonl:1: message 1: .*assistant'
bad empty-content '{"messages":[{"role":"user","content":""},{"role":"assistant","content":"a"}]}\n' 'bad\.jsonl:1: message 0: empty content'
bad blank-content '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":" \\n"}]}\n' 'bad\.jsonl:1: message 1: empty content'
bad blank-unicode '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"\\u3000\\u2028"}]}\n' 'bad\.jsonl:1: message 1: empty content'
bad long-integer '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":{"id":123456789012345678901}}}]},{"role":"tool","content":"r"},{"role":"assistant","content":"a"}]}\n' 'bad\.jsonl:1: message 1: an integer of more than 19 digits'
bad long-integer-text '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\\"id\\": -123456789012345678901}"}}]},{"role":"tool","content":"r"},{"role":"assistant","content":"a"}]}\n' 'bad\.jsonl:1: message 1: an integer of more than 19 digits'
bad null-content '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":null}]}\n' 'bad\.jsonl:1: message 1: empty content'
bad orphan-tool '{"messages":[{"role":"user","content":"u"},{"role":"tool","content":"r"},{"role":"assistant","content":"a"}]}\n' 'bad\.jsonl:1: message 1: a tool result without a preceding'
bad bad-tool-calls '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":{}}}]}]}\n' 'bad\.jsonl:1: message 1: tool call 0: "function.name"'
bad bad-arguments '{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":"{oops"}}]}]}\n' 'bad\.jsonl:1: message 1: tool call 0: "arguments" is not JSON'
bad no-assistant '{"messages":[{"role":"user","content":"u"}]}\n' 'bad\.jsonl:1: no assistant message'
bad unknown-shape '{"prompt":"u"}\n' 'bad\.jsonl:1: .*--jq'
printf '%s' "{{ raise_exception('only user turns, please') }}" > "$T/raise.jinja"
bad template-raised "$good" "bad\.jsonl:1: .*only user turns, please" --template "$T/raise.jinja"

# Numbers written 100.0 are floats to the template (json.loads's reading),
# also after a --jq filter that passes them through.
printf '%s\n' '{"m":[{"role":"user","content":"pay"},{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"pay","arguments":{"amount":100.0,"n":3}}}]}],"t":[{"type":"function","function":{"name":"pay","description":"Pay","parameters":{"type":"object","properties":{"amount":{"type":"number","default":1.0}}}}}]}' > "$T/floats.jsonl"
if expect floats-jq 0 "$DS" --model "$Q" --jq '{messages: .m, tools: .t}' "$T/floats.jsonl"; then
	jq -r .text "$T/out" | grep -q '"default": 1.0}' && jq -r .text "$T/out" | grep -q '{"amount": 100.0, "n": 3}' &&
		ok "floats stay floats (100.0, through --jq)" || notok floats-jq "$(jq -r .text "$T/out" | grep -E 'default|amount')"
fi

printf '%s\n' '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}],"meta":{"x":2.0,"y":3,"z":0.5}}' > "$T/float-meta.jsonl"
expect float-meta 0 "$DS" --model "$Q" "$T/float-meta.jsonl" && grep -q '"meta":{"x":2.0,"y":3,"z":0.5}}$' "$T/out" &&
	ok "a key passing through keeps its floats (2.0)" || unreported float-meta

# The output does not depend on the number of worker threads (batches of 64
# records: 300 records make several per thread).
for i in $(seq 1 100); do cat "$T/chat.jsonl"; done > "$T/many.jsonl"
"$DS" --model "$Q" "$T/many.jsonl" > "$T/want" 2>/dev/null
for n in 1 3 7; do
	expect "threads-$n" 0 "$DS" --model "$Q" --threads "$n" "$T/many.jsonl" && cmp -s "$T/out" "$T/want" &&
		[ "$(wc -l < "$T/out")" -eq 300 ] && ok "--threads $n: the same output" || unreported "threads-$n"
done
expect threads-bad 2 "$DS" --model "$Q" --threads -1 "$T/many.jsonl" && ok "--threads -1 is refused" || unreported threads-bad

# A FILE is cut into ranges of 64 KiB in which the workers find their own
# lines: lines longer than a range, blank ones, a CRLF file with a byte-order
# mark, bad records past the first ranges (named by their line in the file,
# skipped or stopped at) give what the same bytes through a pipe give.
python3 - "$T/ranges.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w", encoding="utf-8", newline="") as f:
    f.write("\ufeff")
    for i in range(3000):
        content = ("Сообщение %d " % i) * (40000 if i % 997 == 5 else 3)  # some lines of ~600 KB
        rec = {"id": i, "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok %d" % i}]}
        f.write(("   \r\n" if i % 50 == 7 else "") + json.dumps(rec, ensure_ascii=False) + "\r\n")
    f.write('{"messages":[{"role":"robot","content":"x"}]}\r\n')  # a bad record, the file's line 3061
    f.write(json.dumps({"id": "last", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
PY
cat "$T/ranges.jsonl" | "$DS" --model "$Q" --skip-bad 2>&1 > "$T/want" | sed "s|<stdin>|$T/ranges.jsonl|" > "$T/want.err"
for n in 1 2 3 16; do
	expect "ranges-$n" 0 "$DS" --model "$Q" --skip-bad --threads "$n" "$T/ranges.jsonl" && cmp -s "$T/out" "$T/want" &&
		cmp -s "$T/err" "$T/want.err" && [ "$(wc -l < "$T/out")" -eq 3001 ] && stderr_has "ranges-$n" 'ranges.jsonl:3061: message 0' &&
		ok "a 4 MB file in ranges, --threads $n: the pipe's output and warnings" || unreported "ranges-$n"
done
# --progress's memo figures add up every worker's (each frees its own memo
# when it leaves): a record is written from a shape or renders one learned,
# whatever the thread count; the four lines of ~600 KB are rendered.
memo_sum() { sed -n 's/.*: \([0-9]*\) records written from \([0-9]*\) shapes learned;.*/\1 \2/p' "$T/err" | awk '{print $1 + $2}'; }
expect memo-sum-1 0 "$DS" --model "$Q" --skip-bad --threads 1 --progress -o /dev/null "$T/ranges.jsonl" && one=$(memo_sum) &&
	expect memo-sum-16 0 "$DS" --model "$Q" --skip-bad --threads 16 --progress -o /dev/null "$T/ranges.jsonl" &&
	[ "$one" = 2997 ] && [ "$(memo_sum)" = 2997 ] &&
	ok "--progress: the memo's figures of 16 workers add up (2997 records)" || notok memo-sum "1 thread: $one, 16: $(memo_sum)"
# standard input that is the file (< FILE) is mapped and cut so too
expect ranges-stdin 0 "$DS" --model "$Q" --skip-bad --threads 2 < "$T/ranges.jsonl" && cmp -s "$T/out" "$T/want" &&
	sed -i "s|<stdin>|$T/ranges.jsonl|" "$T/err" && cmp -s "$T/err" "$T/want.err" &&
	ok "the same file as standard input: the pipe's output and warnings" || unreported ranges-stdin
# from where a script's earlier read left standard input: the lines after it
{ head -n 2000 > /dev/null; "$DS" --model "$Q" --skip-bad > "$T/out" 2> "$T/err"; } < "$T/ranges.jsonl"
tail -n +2001 "$T/ranges.jsonl" | "$DS" --model "$Q" --skip-bad > "$T/want.tail" 2> "$T/want.tail.err"
cmp -s "$T/out" "$T/want.tail" && cmp -s "$T/err" "$T/want.tail.err" && [ "$(wc -l < "$T/out")" -gt 1000 ] &&
	grep -q '<stdin>:1061: message 0' "$T/err" && ok "standard input read from where a script left it" ||
	notok ranges-offset "$(wc -l < "$T/out") lines; $(head -c 300 "$T/err")"
expect ranges-stop 2 "$DS" --model "$Q" -o "$T/ranges.out" "$T/ranges.jsonl" && stderr_has ranges-stop 'ranges.jsonl:3061: message 0' &&
	[ ! -e "$T/ranges.out" ] && ok "a bad record past the first ranges: its line, exit 2, no output" || unreported ranges-stop

# --skip-bad goes on past bad records and counts them.
printf '%b' "$good{oops\n{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n$good" > "$T/skip.jsonl"
expect skip-bad 0 "$DS" --model "$Q" --skip-bad "$T/skip.jsonl" && [ "$(wc -l < "$T/out")" -eq 2 ] &&
	stderr_has skip-bad '2 bad records were skipped' && ok "--skip-bad skips and counts" || unreported skip-bad

# Usage errors.
expect no-model 2 "$DS" "$T/chat.jsonl" && stderr_has no-model '--model is required' && ok "--model is required" || unreported no-model
expect missing-model 2 "$DS" --model "$T/nowhere" "$T/chat.jsonl" && stderr_has missing-model 'nowhere' && ok "a missing model is named" || unreported missing-model
# The workers start before the model loads: a bad model still stops ds-fmt
# with its message and no output while they wait. The input is opened first.
expect missing-model-workers 2 "$DS" --model "$T/nowhere" --threads 16 -o "$T/mm.out" "$T/ranges.jsonl" &&
	stderr_has missing-model-workers 'nowhere' && [ ! -e "$T/mm.out" ] &&
	ok "a missing model with 16 workers started: named, exit 2, no output" || unreported missing-model-workers
expect missing-input 1 "$DS" --model "$T/nowhere" "$T/absent.jsonl" && stderr_has missing-input 'absent\.jsonl' &&
	ok "a missing input is named (exit 1, as I/O), before the model" || unreported missing-input
expect bad-choice 2 "$DS" --model "$Q" --train-turns some && stderr_has bad-choice 'all\|last' && ok "bad choice" || unreported bad-choice
expect missing-tools 2 "$DS" --model "$Q" --tools "$T/none.json" "$T/chat.jsonl" && stderr_has missing-tools 'none\.json' && ok "a missing --tools file is named" || unreported missing-tools
finish
