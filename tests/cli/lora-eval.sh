#!/usr/bin/env bash
# lora-eval --generate as a user runs it, on a tiny Hugging Face model this
# test writes (qwen2_5's tokenizer fixture, one llama layer, F32 safetensors)
# whose output is known: every token has the same embedding and the layer adds
# nothing, so the logits are the same at every step and greedy decoding
# repeats one chosen token ("Hello"); at a high temperature the draws spread
# over the vocabulary. Checked: the output line, end reasons (eos, stop
# strings, length), seeds, weight formats, the prompt against ds-fmt's, and
# bad input (clear message with the line, exit 2, no output file left behind).
. "$(dirname "$0")/lib.sh"
LE=$BIN/lora-eval
DS=$BIN/ds-fmt
[ -x "$LE" ] || { skip lora-eval "bin/lora-eval is not built"; finish; }

# --help names every option, and the man page documents each of them, with
# the same descriptions opt_man makes from the option table.
if expect help 0 "$LE" --help; then
	opts=$(grep -oE -- '--[a-z][a-z-]+' "$T/out" | sort -u)
	missing=$(for o in $opts; do grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$ROOT/man/lora-eval.1" || echo "$o"; done)
	if [ -z "$opts" ]; then notok help "no options in --help"
	elif [ -n "$missing" ]; then notok help "man/lora-eval.1 lacks: $missing"
	else ok "help lists $(echo $opts | wc -w) options, all in man/lora-eval.1"; fi
fi
if expect help-man 0 "$LE" --help-man; then
	if python3 - "$T/out" "$ROOT/man/lora-eval.1" <<'PY'; then ok "man/lora-eval.1 OPTIONS is what opt_man writes"; else notok help-man "regenerate: bin/lora-eval --help-man"; fi
import sys
gen, man = open(sys.argv[1]).read(), open(sys.argv[2]).read()
sys.exit(0 if gen.strip() in man else 1)
PY
fi

# Usage errors need no model.
expect no-generate 2 "$LE" --model x && stderr_has no-generate -- '--generate' && ok "without --generate: exit 2"
expect no-model 2 "$LE" --generate && stderr_has no-model -- '--model is required' && ok "without --model: exit 2"
expect bad-top-p 2 "$LE" --generate --model x --top-p 1.5 && ok "--top-p 1.5: exit 2"
expect bad-fmt 2 "$LE" --generate --model x --fmt q4 && ok "--fmt q4: exit 2"

Q=$(fixture qwen2_5) || { skip lora-eval "fixture qwen2_5 not found under $FIXTURES"; finish; }
M=$T/tiny
mkdir -p "$M"
cp "$Q/tokenizer.json" "$Q/tokenizer_config.json" "$M/"
# make_model FOLDER TOKEN [EOS_TOKEN]: the weights and config.json.
make_model() {
	python3 - "$@" <<'PY'
import array, json, random, struct, sys
out, fav = sys.argv[1], sys.argv[2]
tk = json.load(open(out + "/tokenizer.json", encoding="utf-8"))
ids = dict(tk["model"]["vocab"])
for a in tk["added_tokens"]:
    ids[a["content"]] = a["id"]
V, D, F = max(ids.values()) + 1, 8, 16
eos = ids[sys.argv[3] if len(sys.argv) > 3 else "<|im_end|>"]
rnd = random.Random(5)
vec = lambda n, f: array.array("f", (f() for _ in range(n)))
zeros = lambda n: array.array("f", bytes(4 * n))
t = {}
emb = zeros(V * D)
for i in range(V):
    emb[i * D] = 1.0              # one embedding for every token: a constant residual stream
t["model.embed_tokens.weight"] = ([V, D], emb)
head = vec(V * D, lambda: rnd.gauss(0, 1))
head[ids[fav] * D] = 10.0         # the chosen token wins greedy decoding by far
t["lm_head.weight"] = ([V, D], head)
t["model.norm.weight"] = ([D], vec(D, lambda: 1.0))
p = "model.layers.0."
t[p + "input_layernorm.weight"] = ([D], vec(D, lambda: 1.0))
t[p + "post_attention_layernorm.weight"] = ([D], vec(D, lambda: 1.0))
for n, r, c in (("self_attn.q_proj", 8, D), ("self_attn.k_proj", 4, D), ("self_attn.v_proj", 4, D),
                ("mlp.gate_proj", F, D), ("mlp.up_proj", F, D)):
    t[p + n + ".weight"] = ([r, c], vec(r * c, lambda: rnd.gauss(0, 0.3)))
t[p + "self_attn.o_proj.weight"] = ([D, 8], zeros(D * 8))    # the layer adds nothing
t[p + "mlp.down_proj.weight"] = ([D, F], zeros(D * F))
hdr, off, blobs = {}, 0, []
for k, (shape, a) in t.items():
    b = a.tobytes()
    hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    off += len(b)
    blobs.append(b)
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
with open(out + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
           "intermediate_size": F, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "hidden_act": "silu", "tie_word_embeddings": False, "eos_token_id": eos},
          open(out + "/config.json", "w"))
print(ids[fav])
PY
}
HELLO=$(make_model "$M" Hello) || { notok model "could not write the tiny model"; finish; }
# The same weights, with "Hello" as the end token.
E=$T/tiny-eos
mkdir -p "$E"
for f in tokenizer.json tokenizer_config.json model.safetensors; do ln -s "$M/$f" "$E/$f"; done
jq -c ".eos_token_id = $HELLO" "$M/config.json" > "$E/config.json"

cat > "$T/chat.jsonl" <<'J'
{"id":1,"messages":[{"role":"system","content":"You are a bank assistant."},{"role":"user","content":"Is my access active?"},{"role":"assistant","content":"Let me check."}],"meta":{"src":"x"}}
{"messages":[{"role":"user","content":"Мой доступ активен?"}]}
{"id":"c","instruction":"Translate to English","input":"кот","output":"cat"}
J

# The line: other keys first, the prompt as ds-fmt renders it, the completion.
if expect basic 0 "$LE" --generate --model "$M" --max-new 3 --ids "$T/chat.jsonl"; then
	cp "$T/out" "$T/basic"
	"$DS" --model "$M" --add-generation-prompt "$T/chat.jsonl" > "$T/fmt" 2>/dev/null
	got=$(jq -c '[.id, .meta, .completion, .stop, .completion_tokens, .expected, (.prompt_ids | length) == .prompt_tokens, .completion_ids]' "$T/basic" | tr '\n' ' ')
	want="[1,{\"src\":\"x\"},\"HelloHelloHello\",\"length\",3,{\"role\":\"assistant\",\"content\":\"Let me check.\"},true,[$HELLO,$HELLO,$HELLO]] [null,null,\"HelloHelloHello\",\"length\",3,null,true,[$HELLO,$HELLO,$HELLO]] [\"c\",null,\"HelloHelloHello\",\"length\",3,{\"role\":\"assistant\",\"content\":\"cat\"},true,[$HELLO,$HELLO,$HELLO]] "
	if [ "$got" != "$want" ]; then notok basic "got $got"
	elif [ "$(jq -r .prompt "$T/basic")" != "$(jq -r .text "$T/fmt")" ]; then notok basic "prompts differ from ds-fmt --add-generation-prompt"
	elif [ "$(head -c 7 "$T/basic")" != '{"id":1' ]; then notok basic "the id is not first: $(head -c 40 "$T/basic")"
	else ok "line: keys, ds-fmt's prompt, completion, expected, stop, counts"; fi
fi

# The prompt's tokens are the rendered text's, as tok encodes it (no BOS added:
# qwen2.5's tokenizer adds none).
if [ -s "$T/basic" ]; then
	jq -c '{text: .prompt, train: [[0, 1]]}' "$T/basic" > "$T/f2.jsonl"
	if "$BIN/tok" --model "$M" --jsonl "$T/f2.jsonl" > "$T/tok" 2>"$T/err"; then
		[ "$(jq -c .ids "$T/tok")" = "$(jq -c .prompt_ids "$T/basic")" ] && ok "prompt ids are tok's ids of the prompt" ||
			notok prompt-ids "$(jq -c .ids "$T/tok" | head -c 200) vs $(jq -c .prompt_ids "$T/basic" | head -c 200)"
	else notok prompt-ids "tok failed: $(head -c 300 "$T/err")"; fi
fi

# End reasons.
if expect stop 0 "$LE" --generate --model "$M" --max-new 5 --stop lloHe --stop zzz "$T/chat.jsonl"; then
	[ "$(jq -c '[.completion, .stop, .completion_tokens]' "$T/out" | sort -u)" = '["He","stop",2]' ] &&
		ok "--stop across tokens: text cut before it, stop \"stop\"" || notok stop "$(jq -c '[.completion, .stop, .completion_tokens]' "$T/out" | head -1)"
fi
if expect eos 0 "$LE" --generate --model "$E" --max-new 5 "$T/chat.jsonl"; then
	[ "$(jq -c '[.completion, .stop, .completion_tokens]' "$T/out" | sort -u)" = '["","eos",0]' ] &&
		ok "an end token ends the completion and is not in it" || notok eos "$(head -c 300 "$T/out")"
fi
if expect max-new-0 0 "$LE" --generate --model "$M" -n 0 "$T/chat.jsonl"; then
	[ "$(jq -c '[.completion, .stop]' "$T/out" | sort -u)" = '["","length"]' ] && ok "--max-new 0: empty, length" ||
		notok max-new-0 "$(head -c 300 "$T/out")"
fi

# Weight formats: the chosen token wins by far, so every format repeats it.
for f in bf16 int8 nf4; do
	if expect "fmt-$f" 0 "$LE" --generate --model "$M" --max-new 2 --fmt "$f" "$T/chat.jsonl"; then
		[ "$(jq -r .completion "$T/out" | sort -u)" = HelloHello ] && ok "--fmt $f" || notok "fmt-$f" "$(head -c 300 "$T/out")"
	fi
done

# Sampling: the same seed, the same completions; another seed, others; line i
# draws with seed + i.
printf '%s\n' '{"messages":[{"role":"user","content":"Hi"}]}' '{"messages":[{"role":"user","content":"Hi"}]}' > "$T/two.jsonl"
samp() { "$LE" --generate --model "$M" --max-new 8 --temperature 5 --top-p 0.99 --top-k 5000 --seed "$1" --ids "$T/two.jsonl" 2>"$T/err"; }
a=$(samp 7 | jq -c .completion_ids) b=$(samp 7 | jq -c .completion_ids) c=$(samp 8 | jq -c .completion_ids)
a1=$(echo "$a" | sed -n 1p) a2=$(echo "$a" | sed -n 2p) c1=$(echo "$c" | sed -n 1p)
if [ -z "$a1" ] || [ -z "$a2" ]; then notok seed "no output: $(head -c 300 "$T/err")"
elif [ "$a" != "$b" ]; then notok seed "seed 7 twice differs: $a / $b"
elif [ "$a1" = "$a2" ]; then notok seed "lines 0 and 1 drew the same: $a1"
elif [ "$a2" != "$c1" ]; then notok seed "line 1 of seed 7 ($a2) is not line 0 of seed 8 ($c1)"
elif [ "$a1" = "[$HELLO,$HELLO,$HELLO,$HELLO,$HELLO,$HELLO,$HELLO,$HELLO]" ]; then notok seed "temperature 5 drew only the greedy token"
else ok "same seed, same draws; line i uses seed + i"; fi

# Batches: five conversations of different lengths decoded one at a time, three
# and eight together give the same lines, sampled or greedy.
for i in 1 2 3 4 5; do
	printf '{"id":%d,"messages":[{"role":"user","content":"%s"}]}\n' "$i" "$(head -c $((i * 7)) /dev/zero | tr '\0' x)"
done > "$T/five.jsonl"
for b in 1 3 8; do
	"$LE" --generate --model "$M" --max-new 6 --temperature 3 --top-k 50 --seed 5 --ids --batch "$b" "$T/five.jsonl" > "$T/b$b.jsonl" 2>"$T/err"
	"$LE" --generate --model "$M" --max-new 6 --ids --batch "$b" "$T/five.jsonl" >> "$T/b$b.jsonl" 2>>"$T/err"
done
if [ "$(wc -l < "$T/b1.jsonl")" -ne 10 ]; then notok batch "one at a time: $(head -c 300 "$T/err")"
elif ! cmp -s "$T/b1.jsonl" "$T/b3.jsonl" || ! cmp -s "$T/b1.jsonl" "$T/b8.jsonl"; then notok batch "--batch 3 or 8 changed the output"
else ok "--batch 1, 3 and 8 write the same lines"; fi

# --adapter: a PEFT folder (random A and B on o and down, which the model
# leaves at zero) changes the sampled completions; a missing folder or an
# adapter of another shape is refused before anything is written.
LD=$ROOT/build/ref/lora_driver
if [ ! -x "$LD" ]; then notok adapter "build/ref/lora_driver is not built (make ref)"
elif ! "$LD" save "$M" "$T/ad" --rank 4 --alpha 8 --targets o,down --seed 3 2>"$T/err"; then notok adapter "lora_driver: $(head -c 300 "$T/err")"
else
	with=$("$LE" --generate --model "$M" --adapter "$T/ad" --max-new 8 --temperature 2 --seed 1 --ids "$T/five.jsonl" 2>"$T/err" | jq -c .completion_ids)
	without=$("$LE" --generate --model "$M" --max-new 8 --temperature 2 --seed 1 --ids "$T/five.jsonl" 2>>"$T/err" | jq -c .completion_ids)
	if [ -z "$with" ] || [ -z "$without" ]; then notok adapter "no output: $(head -c 300 "$T/err")"
	elif [ "$with" = "$without" ]; then notok adapter "the adapter changed no draw"
	else ok "--adapter changes the completions"; fi
	if expect adapter-missing 2 "$LE" --generate --model "$M" --adapter "$T/nowhere" -o "$T/am.jsonl" "$T/five.jsonl"; then
		stderr_has adapter-missing nowhere && [ ! -e "$T/am.jsonl" ] && ok "a missing adapter: exit 2, no output"
	fi
	sed 's/"r": 4/"r": 5/' "$T/ad/adapter_config.json" > "$T/cfg" && mkdir -p "$T/ad5" && cp "$T/ad/adapter_model.safetensors" "$T/ad5/" && mv "$T/cfg" "$T/ad5/adapter_config.json"
	if expect adapter-shape 2 "$LE" --generate --model "$M" --adapter "$T/ad5" "$T/five.jsonl"; then
		stderr_has adapter-shape 'shape' && ok "an adapter whose shapes disagree with its rank: exit 2"
	fi
fi

# -o writes atomically; bad input stops before generating, names the line,
# exits 2 and leaves no file.
if expect out-file 0 "$LE" --generate --model "$M" --max-new 1 -o "$T/o.jsonl" "$T/chat.jsonl"; then
	[ ! -s "$T/out" ] && [ "$(wc -l < "$T/o.jsonl")" -eq 3 ] && ok "-o FILE" || notok out-file "stdout or file wrong"
fi
bad() { # NAME LINE2 PATTERN
	printf '%s\n%s\n' '{"messages":[{"role":"user","content":"Hi"}]}' "$2" > "$T/bad.jsonl"
	if expect "$1" 2 "$LE" --generate --model "$M" --max-new 1 -o "$T/bad-out.jsonl" "$T/bad.jsonl"; then
		if ! stderr_has "$1" "bad.jsonl:2: .*$3"; then :
		elif [ -e "$T/bad-out.jsonl" ] || ls -a "$T" | grep -q '^\.bad-out'; then notok "$1" "output left behind"
		else ok "bad input ($1): line named, exit 2, no output"; fi
	fi
}
bad bad-json '{"messages":' 'JSON'
bad bad-role '{"messages":[{"role":"robot","content":"Hi"}]}' 'role'
bad bad-shape '[1,2]' 'object'
expect empty-stop 2 "$LE" --generate --model "$M" --stop "" "$T/chat.jsonl" && stderr_has empty-stop 'empty' && ok "--stop '': exit 2"
expect no-model-file 2 "$LE" --generate --model "$T/nothing" "$T/chat.jsonl" && ok "a missing model: exit 2"
finish
