#!/usr/bin/env bash
# qlora-fit as a user runs it, on tiny random llama models this test writes
# (two layers, dim 16, vocabulary 64, F32 safetensors, no tokenizer files)
# and token streams written by build/ref/tokstream_driver (any vocabulary,
# fingerprint, lengths and labels). Checked: bad input (clear message naming
# the file and field, exit 2, no output folder), the memory refusal (exit 1),
# gradient accumulation (4 x 4 = 16 x 1), packing (= no packing), resume after
# SIGKILL at several points (bitwise the uninterrupted adapter), SIGINT (exit
# 130, a valid checkpoint, resumable), resume with other settings (refused
# unless --force), --config, --init-adapter, the outputs' keys.
. "$(dirname "$0")/lib.sh"
QF=$BIN/qlora-fit
TSD=$ROOT/build/ref/tokstream_driver
# SD VOCAB FP OUT < records.txt: a token stream of one example a line, token
# ids separated by spaces, "~ID" for a token that is not learned.
SD() {
	awk '{ ids = labs = ""
	       for (i = 1; i <= NF; i++) {
	           t = $i; l = t
	           if (substr(t, 1, 1) == "~") { t = substr(t, 2); l = -100 }
	           ids = ids (i > 1 ? "," : "") t; labs = labs (i > 1 ? "," : "") l
	       }
	       if (NF) print "{\"ids\":[" ids "],\"labels\":[" labs "]}" }' | "$TSD" "$@"
}
[ -x "$QF" ] || { skip qlora-fit "bin/qlora-fit is not built"; finish; }

# --help names every option, and the man page documents each of them with the
# descriptions opt_man makes from the option table.
if expect help 0 "$QF" --help; then
	opts=$(grep -oE -- '--[a-z][a-z0-9-]+' "$T/out" | sort -u)
	missing=$(for o in $opts; do grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$ROOT/man/qlora-fit.1" || echo "$o"; done)
	if [ -z "$opts" ]; then notok help "no options in --help"
	elif [ -n "$missing" ]; then notok help "man/qlora-fit.1 lacks: $missing"
	else ok "help lists $(echo $opts | wc -w) options, all in man/qlora-fit.1"; fi
fi
if expect help-man 0 "$QF" --help-man; then
	if python3 - "$T/out" "$ROOT/man/qlora-fit.1" <<'PY'; then ok "man/qlora-fit.1 OPTIONS is what opt_man writes"; else notok help-man "regenerate: bin/qlora-fit --help-man"; fi
import sys
gen, man = open(sys.argv[1]).read(), open(sys.argv[2]).read()
sys.exit(0 if gen.strip() in man else 1)
PY
fi

# Usage errors need no model.
expect no-model 2 "$QF" --data x --out "$T/u" && stderr_has no-model -- '--model is required' && ok "without --model: exit 2"
expect bad-sched 2 "$QF" --model x --data x --out "$T/u" --scheduler steep && ok "--scheduler steep: exit 2"
expect bad-lr 2 "$QF" --model x --data x --out "$T/u" --lr -1 && ok "--lr -1: exit 2"
expect bad-cuda 2 "$QF" --model x --data x --out "$T/u" --device cuda && stderr_has bad-cuda 'CUDA' && ok "--device cuda without a CUDA build: exit 2"
expect bad-flag 2 "$QF" --model x --data x --out "$T/u" --no-such-flag && ok "an unknown flag: exit 2"
[ ! -e "$T/u" ] && ok "usage errors leave no output folder" || notok usage-out "$T/u exists"

[ -x "$TSD" ] || { skip qlora-fit-runs "build/ref/tokstream_driver is not built (make build/ref/tokstream_driver)"; finish; }

# make_model DIR [MAX_POS [HIDDEN LAYERS VOCAB]]: a tiny random llama; with
# HIDDEN LAYERS VOCAB, config.json alone (for the memory estimate).
make_model() {
	mkdir -p "$1"
	python3 - "$@" <<'PY'
import array, json, random, struct, sys
out = sys.argv[1]
max_pos = int(sys.argv[2]) if len(sys.argv) > 2 else 256
D, F, L, V = 16, 32, 2, 64
cfg_only = len(sys.argv) > 3
if cfg_only:
    D, L, V = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    F = 4 * D
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
           "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": D // 2, "max_position_embeddings": max_pos, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "hidden_act": "silu", "tie_word_embeddings": False}, open(out + "/config.json", "w"))
if cfg_only:
    sys.exit(0)
rnd = random.Random(7)
vec = lambda n, s: array.array("f", (rnd.gauss(0, s) for _ in range(n)))
ones = lambda n: array.array("f", [1.0] * n)
t = {"model.embed_tokens.weight": ([V, D], vec(V * D, 1.0)), "lm_head.weight": ([V, D], vec(V * D, 0.3)),
     "model.norm.weight": ([D], ones(D))}
for l in range(L):
    p = "model.layers.%d." % l
    t[p + "input_layernorm.weight"] = ([D], ones(D))
    t[p + "post_attention_layernorm.weight"] = ([D], ones(D))
    for n, r, c in (("self_attn.q_proj", D, D), ("self_attn.k_proj", D // 2, D), ("self_attn.v_proj", D // 2, D),
                    ("self_attn.o_proj", D, D), ("mlp.gate_proj", F, D), ("mlp.up_proj", F, D),
                    ("mlp.down_proj", D, F)):
        t[p + n + ".weight"] = ([r, c], vec(r * c, 0.25))
hdr, off, blobs = {}, 0, []
for k, (shape, a) in t.items():
    b = a.tobytes()
    hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    off += len(b)
    blobs.append(b)
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
open(out + "/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
}
# records SEED COUNT MINLEN MAXLEN: random records for the driver, the first
# two tokens of each not learned.
records() {
	awk -v seed="$1" -v n="$2" -v lo="$3" -v hi="$4" 'BEGIN { srand(seed); for (r = 0; r < n; r++) {
		len = lo + int(rand() * (hi - lo + 1)); s = ""
		for (i = 0; i < len; i++) s = s (i < 2 ? "~" : "") int(rand() * 64) " "
		print s } }'
}
# maxdiff A B: the largest absolute difference between two safetensors files'
# tensors (F32), "keys differ" when their tensors differ in name or shape.
maxdiff() {
	python3 - "$1" "$2" <<'PY'
import array, json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        a = array.array("f")
        a.frombytes(b[8 + n + s:8 + n + e])
        out[k] = (v["shape"], a)
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
if {k: v[0] for k, v in a.items()} != {k: v[0] for k, v in b.items()}:
    print("keys differ"); sys.exit(0)
print(max((abs(x - y) for k in a for x, y in zip(a[k][1], b[k][1])), default=0.0))
PY
}
within() { python3 -c "import sys; sys.exit(0 if float('$1') <= float('$2') else 1)" 2>/dev/null; }

M=$T/model
make_model "$M" || { notok model "could not write the tiny model"; finish; }
records 11 24 6 20 > "$T/r.txt"
SD 64 0 "$T/d.tok.zst" < "$T/r.txt" 2>"$T/err" || { notok driver "$(cat "$T/err")"; finish; }
FIT=("$QF" --model "$M" --data "$T/d.tok.zst" --quant none --threads 1 --seq-len 64)

# A plain run: the adapter folder, training_args.json, log.jsonl, the
# console's table and PEFT's trainable-parameters line.
if expect basic 0 "${FIT[@]}" --out "$T/basic" --epochs 2 --val-split 0.1 --rank 4 --target q,v,down; then
	o=$T/basic
	want='["grad_norm","learned_tokens","loss","lr","mem_mb","ms_per_step","step","epoch","tokens_per_s"]'
	if [ ! -s "$o/adapter_model.safetensors" ] || [ ! -s "$o/adapter_config.json" ]; then notok basic "no adapter files"
	elif [ "$(jq -r '.r, .target_modules' -c "$o/adapter_config.json" | tr -d '\n')" != '4["q_proj","v_proj","down_proj"]' ]; then notok basic "adapter_config: $(head -c 300 "$o/adapter_config.json")"
	elif [ "$(jq -c 'select(.loss) | keys_unsorted | sort' "$o/log.jsonl" | sort -u)" != "$(echo "$want" | jq -c sort)" ]; then notok basic "log keys: $(head -1 "$o/log.jsonl")"
	elif [ "$(jq -s 'map(select(.loss)) | length' "$o/log.jsonl")" != "$(jq .total_steps "$o/training_args.json")" ]; then notok basic "log lines vs total_steps"
	elif [ "$(jq -s 'map(select(.val_loss)) | length' "$o/log.jsonl")" != 2 ]; then notok basic "expected 2 eval lines (one per epoch)"
	elif [ "$(jq -r '[.rank, .alpha, .seed, .["seq-len"], .quant, .fingerprints.model != null] | @tsv' "$o/training_args.json")" != "$(printf '4\t32\t42\t64\tnone\ttrue')" ]; then notok basic "training_args: $(head -c 300 "$o/training_args.json")"
	elif ! grep -Eq '^trainable params: [0-9,]+ \|\| all params: [0-9,]+ \|\| trainable%: [0-9.]+$' "$T/err"; then notok basic "no PEFT trainable line"
	elif ! grep -q 'tokenizer fingerprint cannot be checked' "$T/err"; then notok basic "no note on the unchecked tokenizer"
	elif [ ! -s "$o/best/adapter_model.safetensors" ]; then notok basic "no best/"
	elif [ "$(ls -d "$o"/checkpoint-* | wc -l)" != 1 ]; then notok basic "expected one checkpoint (the last)"
	else ok "plain run: adapter, best/, last checkpoint, training_args.json, log.jsonl keys, PEFT's line"; fi
	# the loss goes down over a long run with a high lr
	if expect learns 0 "${FIT[@]}" --out "$T/learns" --epochs 30 --lr 1e-2 --dropout 0 -q; then
		first=$(jq -s 'map(select(.loss)) | .[0:5] | map(.loss) | add / 5' "$T/learns/log.jsonl")
		last=$(jq -s 'map(select(.loss)) | .[-5:] | map(.loss) | add / 5' "$T/learns/log.jsonl")
		within "$last" "$(python3 -c "print($first * 0.8)")" && ok "the loss falls ($first -> $last)" || notok learns "loss $first -> $last"
	fi
fi

# Bad input: exit 2, a message naming the file and field, no output folder.
bad() { # NAME PATTERN ARGS...
	local name=$1 pat=$2; shift 2
	rm -rf "$T/bad"
	if expect "$name" 2 "$@" --out "$T/bad"; then
		if ! stderr_has "$name" "$pat"; then :
		elif [ -e "$T/bad" ]; then notok "$name" "output folder left behind"
		else ok "bad input ($name): exit 2, named, no output"; fi
	fi
}
: > "$T/empty.txt"
SD 64 0 "$T/empty.tok.zst" < "$T/empty.txt"
bad empty-stream 'empty.tok.zst: the token stream holds no records' "${FIT[@]/$T\/d.tok.zst/$T/empty.tok.zst}"
SD 100 0 "$T/v100.tok.zst" < "$T/r.txt"
bad vocab 'v100.tok.zst: header vocab_size 100 is larger than the model' "${FIT[@]/$T\/d.tok.zst/$T/v100.tok.zst}"
{ cat "$T/r.txt"; records 5 1 80 80; } > "$T/long.txt"
SD 64 0 "$T/long.tok.zst" < "$T/long.txt"
bad overflow 'long.tok.zst: record 25: 80 tokens, more than --seq-len 64' "${FIT[@]/$T\/d.tok.zst/$T/long.tok.zst}"
bad val-both 'exclude' "${FIT[@]}" --val "$T/d.tok.zst" --val-split 0.1
bad seq-ctx 'context' "${FIT[@]}" --seq-len 1000
printf '{"lr": 0.001,\n "no-such": 1}\n' > "$T/badcfg.json"
bad config-key 'badcfg.json:2: key "no-such": not an option' "${FIT[@]}" --config "$T/badcfg.json"
printf '{\n "lr": 0.001,\n "rank": [4]\n}\n' > "$T/badcfg2.json"
bad config-type 'badcfg2.json:3: key "rank": expected a number' "${FIT[@]}" --config "$T/badcfg2.json"
# the stream's tokenizer is not the model's
Q=$(fixture qwen2_5) && {
	MT=$T/model-tok
	mkdir -p "$MT"
	cp "$M/config.json" "$M/model.safetensors" "$Q/tokenizer.json" "$Q/tokenizer_config.json" "$MT/"
	bad tokenizer-fp 'd.tok.zst: header tokenizer_fp 0000000000000000 differs from the model' \
		"$QF" --model "$MT" --data "$T/d.tok.zst" --quant none --seq-len 64
	SD 64 "model:$MT" "$T/qfp.tok.zst" < "$T/r.txt" 2>"$T/err"
	expect tokenizer-ok 0 "$QF" --model "$MT" --data "$T/qfp.tok.zst" --quant none --seq-len 64 --max-steps 1 --out "$T/tokok" &&
		! grep -q 'cannot be checked' "$T/err" && ok "the model's tokenizer fingerprint matches: runs, no note" || unreported tokenizer-ok
} || skip tokenizer-fp "fixture qwen2_5 not found under $FIXTURES"
# overflow truncate and drop go on, and say so
expect overflow-truncate 0 "${FIT[@]/$T\/d.tok.zst/$T/long.tok.zst}" --overflow truncate --max-steps 1 --out "$T/trunc" &&
	stderr_has overflow-truncate '1 records truncated' && ok "--overflow truncate"
expect overflow-drop 0 "${FIT[@]/$T\/d.tok.zst/$T/long.tok.zst}" --overflow drop --max-steps 1 --out "$T/drop" &&
	stderr_has overflow-drop '1 dropped' && ok "--overflow drop"
# a used output folder is not overwritten
expect used-out 2 "${FIT[@]}" --max-steps 1 --out "$T/basic" && stderr_has used-out 'not empty' && ok "a used --out: exit 2 without --resume or --force"

# The memory estimate: a config-only model of 70 billion-odd parameters is
# refused before anything is loaded (exit 1).
BIG=$T/big
make_model "$BIG" 4096 16384 80 64
expect memory 1 "$QF" --model "$BIG" --data "$T/d.tok.zst" --quant bf16 --seq-len 64 --out "$T/big-out" &&
	stderr_has memory 'needs about [0-9]+ MB' && [ ! -e "$T/big-out" ] && ok "memory estimate over what is available: refused, exit 1" || unreported memory

# Accumulation (DESIGN.md trap 5): 16 examples as 4 micro-batches of 4 rows or
# 1 of 16 rows, one optimizer step: the same adapter within 1e-5, the same loss.
records 21 16 4 30 > "$T/acc.txt"
SD 64 0 "$T/acc.tok.zst" < "$T/acc.txt"
ACC=("$QF" --model "$M" --data "$T/acc.tok.zst" --quant none --threads 1 --seq-len 64 --no-packing --max-steps 1 --lr 1e-2 -q)
"${ACC[@]}" --batch 4 --grad-accum 4 --out "$T/acc4" 2>"$T/err" && "${ACC[@]}" --batch 16 --grad-accum 1 --out "$T/acc16" 2>>"$T/err" &&
	"${ACC[@]}" --batch 1 --grad-accum 16 --out "$T/acc1" 2>>"$T/err"
if [ ! -s "$T/acc1/adapter_model.safetensors" ]; then notok accumulation "a run failed: $(head -c 300 "$T/err")"
else
	d=$(maxdiff "$T/acc4/adapter_model.safetensors" "$T/acc16/adapter_model.safetensors")
	d1=$(maxdiff "$T/acc1/adapter_model.safetensors" "$T/acc16/adapter_model.safetensors")
	l4=$(jq -s '.[0].loss' "$T/acc4/log.jsonl") l16=$(jq -s '.[0].loss' "$T/acc16/log.jsonl")
	n4=$(jq -s '.[0].learned_tokens' "$T/acc4/log.jsonl") n16=$(jq -s '.[0].learned_tokens' "$T/acc16/log.jsonl")
	changed=$(maxdiff "$T/acc16/adapter_model.safetensors" "$T/acc16/checkpoint-1/adapter_model.safetensors")
	if ! within "$d" 1e-5 || ! within "$d1" 1e-5; then notok accumulation "adapters differ by $d (4x4) and $d1 (1x16)"
	elif [ "$n4" != "$n16" ] || ! within "$(python3 -c "print(abs($l4 - $l16))")" 1e-9; then notok accumulation "loss $l4 ($n4 tokens) vs $l16 ($n16)"
	elif [ "$(jq -s 'map(select(.loss)) | length' "$T/acc4/log.jsonl")" != 1 ]; then notok accumulation "4x4 made more than one step"
	else ok "accumulation: --batch 4 --grad-accum 4 = --batch 16 = --batch 1 --grad-accum 16 (max diff $d, $d1; loss $l16)"; fi
fi
# The scale is 1/(learned tokens of the window): a window of two examples
# with very different learned counts gives the mean over all their tokens,
# which is not the mean of the two examples' means.
printf '%s\n' "~1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20" "~30 31" > "$T/w.txt"
SD 64 0 "$T/w.tok.zst" < "$T/w.txt"
WN=("$QF" --model "$M" --quant none --threads 1 --seq-len 64 --no-packing --no-shuffle --max-steps 1 --dropout 0 -q)
"${WN[@]}" --data "$T/w.tok.zst" --batch 2 --out "$T/w2" 2>"$T/err"
head -1 "$T/w.txt" > "$T/w1.txt"; tail -1 "$T/w.txt" > "$T/w2.txt"
SD 64 0 "$T/wa.tok.zst" < "$T/w1.txt"; SD 64 0 "$T/wb.tok.zst" < "$T/w2.txt"
"${WN[@]}" --data "$T/wa.tok.zst" --out "$T/wa" 2>>"$T/err"; "${WN[@]}" --data "$T/wb.tok.zst" --out "$T/wb" 2>>"$T/err"
if [ ! -s "$T/wb/log.jsonl" ]; then notok window-mean "a run failed: $(head -c 300 "$T/err")"
else
	python3 - "$T/w2/log.jsonl" "$T/wa/log.jsonl" "$T/wb/log.jsonl" <<'PY' && ok "a step's loss is the sum over the window's learned tokens / their count" || notok window-mean "see above"
import json, sys
w, a, b = (json.loads(open(p).readline()) for p in sys.argv[1:4])
want = (a["loss"] * a["learned_tokens"] + b["loss"] * b["learned_tokens"]) / (a["learned_tokens"] + b["learned_tokens"])
if w["learned_tokens"] != 20 or abs(w["loss"] - want) > 1e-9 or abs(w["loss"] - (a["loss"] + b["loss"]) / 2) < 1e-3:
    print("    window", w, "parts", a, b); sys.exit(1)
PY
fi

# Packing = no packing: the first step over a window holding all 16 examples,
# packed into fewer rows or one a row, has the same loss and update.
"${ACC[@]}" --batch 16 --dropout 0 --out "$T/nopack" 2>"$T/err"
"${ACC[@]/--no-packing/--no-shuffle}" --batch 16 --dropout 0 --out "$T/pack" 2>>"$T/err"
"${ACC[@]/--no-packing/--no-shuffle}" --batch 16 --dropout 0 --out "$T/pack2" 2>>"$T/err"
if [ ! -s "$T/pack/log.jsonl" ] || [ ! -s "$T/nopack/log.jsonl" ]; then notok packing "a run failed: $(head -c 300 "$T/err")"
else
	lp=$(jq -s '.[0].loss' "$T/pack/log.jsonl") ln=$(jq -s '.[0].loss' "$T/nopack/log.jsonl")
	d=$(maxdiff "$T/pack/adapter_model.safetensors" "$T/nopack/adapter_model.safetensors")
	rows=$(python3 -c "import sys; print(sum(1 for l in open('$T/acc.txt')))")
	if ! within "$(python3 -c "print(abs($lp - $ln))")" 1e-5; then notok packing "loss packed $lp, unpacked $ln"
	elif ! within "$d" 1e-5; then notok packing "adapters differ by $d"
	elif [ "$(jq -s '.[0].tokens_per_s > 0' "$T/pack/log.jsonl")" != true ]; then notok packing "no tokens_per_s"
	else ok "packing = no packing: loss $lp vs $ln, adapters within $d ($rows examples)"; fi
fi

# The data order is the one the man page documents: the validation split and
# each epoch's Fisher-Yates shuffle with splitmix64, recomputed here in Python
# from examples whose learned-token counts (1..12) name them.
for i in $(seq 3 14); do seq -s ' ' 1 "$i" | sed 's/^1 2/~1 ~2/'; done > "$T/ord.txt"
SD 64 0 "$T/ord.tok.zst" < "$T/ord.txt"
if expect order 0 "$QF" --model "$M" --data "$T/ord.tok.zst" --quant none --threads 1 --seq-len 64 --no-packing --epochs 3 \
	--val-split 0.25 --seed 7 --out "$T/ord" -q; then
	python3 - "$T/ord/log.jsonl" <<'PY' && ok "data order: split and per-epoch shuffle as documented (seed 7, 3 epochs)" || notok order "see above"
import json, math, sys
M = (1 << 64) - 1
def nxt(s):
    s[0] = (s[0] + 0x9e3779b97f4a7c15) & M
    z = s[0]
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    return z ^ (z >> 31)
def below(s, n): return (nxt(s) * n) >> 64
def fy(p, seed):
    s = [seed]
    for i in range(len(p) - 1, 0, -1):
        j = below(s, i + 1); p[i], p[j] = p[j], p[i]
    return p
seed, n = 7, 12
learned = [i + 1 for i in range(n)]          # example i has lengths i+3, 2 unlearned + the first label
perm = fy(list(range(n)), seed ^ 0x76616c5f73706c74)
val = set(perm[:math.ceil(0.25 * n)])
train = [i for i in range(n) if i not in val]
want = []
for e in range(3):
    order = fy(list(range(len(train))), seed ^ ((0x9e3779b97f4a7c15 * (e + 1)) & M))
    want += [learned[train[k]] for k in order]
got = [json.loads(l)["learned_tokens"] for l in open(sys.argv[1]) if '"loss"' in l]
vt = [json.loads(l)["val_tokens"] for l in open(sys.argv[1]) if "val_tokens" in l]
if got != want or vt[0] != sum(learned[i] for i in val):
    print("    got", got, "\n    want", want, "\n    val_tokens", vt, sum(learned[i] for i in val)); sys.exit(1)
PY
fi

# --val FILE and --eval-steps: evaluations after steps 2, 4 and the last (5),
# over every learned token of the file; best/ is the adapter of the lowest.
if expect val-file 0 "${FIT[@]}" --val "$T/acc.tok.zst" --eval-steps 2 --max-steps 5 --lr 1e-2 --out "$T/val" -q; then
	want=$(awk '{ n += NF - 2 } END { print n }' "$T/acc.txt")
	got=$(jq -c -s '[map(select(.val_loss)) | .[] | [.step, .val_tokens]]' "$T/val/log.jsonl")
	if [ "$got" != "[[2,$want],[4,$want],[5,$want]]" ]; then notok val-file "eval lines $got, expected steps 2, 4, 5 with $want tokens"
	elif [ ! -s "$T/val/best/adapter_model.safetensors" ]; then notok val-file "no best/"
	else ok "--val FILE --eval-steps 2: evaluations at 2, 4, 5 over $want tokens, best/ kept"; fi
fi

# Gradient checkpointing recomputes each layer (dropout masks redrawn from
# the same seed): the same adapter, bit for bit.
"${FIT[@]}" --max-steps 3 --checkpointing on --out "$T/ck-on" -q 2>"$T/err"
"${FIT[@]}" --max-steps 3 --checkpointing off --out "$T/ck-off" -q 2>>"$T/err"
if [ ! -s "$T/ck-on/adapter_model.safetensors" ] || [ ! -s "$T/ck-off/adapter_model.safetensors" ]; then notok checkpointing "a run failed: $(head -c 300 "$T/err")"
elif [ "$(jq -r .checkpointing "$T/ck-on/training_args.json")" != on ]; then notok checkpointing "training_args.json says $(jq -r .checkpointing "$T/ck-on/training_args.json")"
elif cmp -s "$T/ck-on/adapter_model.safetensors" "$T/ck-off/adapter_model.safetensors"; then ok "--checkpointing on = off, bit for bit"
else notok checkpointing "adapters differ by $(maxdiff "$T/ck-on/adapter_model.safetensors" "$T/ck-off/adapter_model.safetensors")"; fi

# Every frozen-weight format trains (finite losses), the fp32 one included above.
for q in nf4 int8 bf16; do
	if expect "quant-$q" 0 "${FIT[@]/none/$q}" --max-steps 2 --out "$T/q-$q" -q; then
		[ "$(jq -s "map(select(.loss)) | length == 2 and all(.loss > 0 and .loss < 100)" "$T/q-$q/log.jsonl")" = true ] &&
			[ "$(jq -r .quant "$T/q-$q/training_args.json")" = "$q" ] && ok "--quant $q" || notok "quant-$q" "$(head -c 300 "$T/q-$q/log.jsonl")"
	fi
done

# Resume after SIGKILL: runs killed right after checkpoint K (the test hook
# raises SIGKILL inside the next window, after its first row) and resumed
# end with the uninterrupted run's adapter, bit for bit, and the same log.
# Three epochs of a shuffled, packed, validated run with dropout, 2-step windows.
RES=("${FIT[@]}" --epochs 3 --batch 2 --grad-accum 2 --seq-len 32 --val-split 0.2 --save-steps 1 --eval-steps 3 --lr 5e-3)
"${RES[@]}" --out "$T/ref" -q 2>"$T/err" || notok resume-ref "the reference run failed: $(head -c 300 "$T/err")"
total=$(jq .total_steps "$T/ref/training_args.json" 2>/dev/null || echo 0)
[ "$total" -ge 6 ] 2>/dev/null || notok resume-ref "only $total steps"
for k in 1 3 $((total - 2)); do
	rm -rf "$T/kill"
	LORAPIPE_FIT_TEST_SIGNAL=KILL@$k "${RES[@]}" --out "$T/kill" -q 2>"$T/err"
	rc=$?
	if [ "$rc" -ne 137 ]; then notok "kill-$k" "exit $rc, expected 137 (SIGKILL)"; continue; fi
	if [ -e "$T/kill/adapter_model.safetensors" ] || [ ! -s "$T/kill/checkpoint-$k/state.json" ]; then
		notok "kill-$k" "after the kill: $(ls "$T/kill" | tr '\n' ' ')"; continue
	fi
	if expect "resume-$k" 0 "${RES[@]}" --out "$T/kill" --resume; then
		if ! cmp -s "$T/ref/adapter_model.safetensors" "$T/kill/adapter_model.safetensors"; then
			notok "resume-$k" "adapter differs by $(maxdiff "$T/ref/adapter_model.safetensors" "$T/kill/adapter_model.safetensors")"
		elif [ "$(jq -c 'del(.tokens_per_s, .ms_per_step, .mem_mb)' "$T/kill/log.jsonl")" != "$(jq -c 'del(.tokens_per_s, .ms_per_step, .mem_mb)' "$T/ref/log.jsonl")" ]; then
			notok "resume-$k" "log.jsonl differs from the uninterrupted run's"
		elif ! stderr_has "resume-$k" "resumed +from checkpoint-$k"; then :
		else ok "SIGKILL after checkpoint-$k of $total, --resume: adapter bitwise identical, same log"; fi
	fi
done
ls "$T/ref" | grep -c '^checkpoint-' | grep -qx 2 && ok "the last two checkpoints are kept" || notok keep-2 "$(ls "$T/ref" | tr '\n' ' ')"

# A real SIGKILL from outside, at whatever point the run has reached once
# checkpoint-100 exists (inside a step, or while writing a checkpoint).
records 31 200 20 120 > "$T/big.txt"
SD 64 0 "$T/big.tok.zst" < "$T/big.txt"
EXT=("$QF" --model "$M" --data "$T/big.tok.zst" --quant none --threads 1 --seq-len 128 --batch 2 --max-steps 300 --save-steps 20 -q)
"${EXT[@]}" --out "$T/ext-ref" 2>"$T/err" || notok ext-kill "the reference run failed: $(head -c 300 "$T/err")"
"${EXT[@]}" --out "$T/ext" 2>/dev/null &
pid=$!
for _ in $(seq 1000); do [ -d "$T/ext/checkpoint-100" ] && break; sleep 0.01; done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rc=$?
if [ "$rc" -ne 137 ]; then skip ext-kill "the run ended (exit $rc) before the kill landed"
elif expect ext-kill 0 "${EXT[@]}" --out "$T/ext" --resume; then
	at=$(ls "$T/ext" | grep '^checkpoint-' | tr '\n' ' ')
	cmp -s "$T/ext-ref/adapter_model.safetensors" "$T/ext/adapter_model.safetensors" &&
		ok "external SIGKILL after checkpoint-100, --resume: adapter bitwise identical" ||
		notok ext-kill "adapter differs by $(maxdiff "$T/ext-ref/adapter_model.safetensors" "$T/ext/adapter_model.safetensors") ($at)"
fi

# A real SIGINT from outside: exit 130 and the checkpoint of the last finished
# step; --resume ends as the uninterrupted run.
rm -rf "$T/ext-int"
"${EXT[@]}" --out "$T/ext-int" 2>"$T/err-int" &
pid=$!
for _ in $(seq 1000); do [ -d "$T/ext-int/checkpoint-60" ] && break; sleep 0.01; done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [ "$rc" -eq 0 ]; then skip ext-int "the run ended before the signal landed"
elif [ "$rc" -ne 130 ]; then notok ext-int "exit $rc, expected 130: $(tail -c 300 "$T/err-int")"
else
	at=$(sed -n 's/.*interrupted: checkpoint-\([0-9]*\) written.*/\1/p' "$T/err-int")
	if [ -z "$at" ] || [ "$(jq .step "$T/ext-int/checkpoint-$at/state.json" 2>/dev/null)" != "$at" ]; then
		notok ext-int "no valid checkpoint named: $(tail -c 300 "$T/err-int")"
	elif expect ext-int 0 "${EXT[@]}" --out "$T/ext-int" --resume; then
		cmp -s "$T/ext-ref/adapter_model.safetensors" "$T/ext-int/adapter_model.safetensors" &&
			ok "external SIGINT at step $at: exit 130, checkpoint-$at; --resume: adapter bitwise identical" ||
			notok ext-int "adapter differs by $(maxdiff "$T/ext-ref/adapter_model.safetensors" "$T/ext-int/adapter_model.safetensors")"
	fi
fi

# SIGTERM is handled as SIGINT.
rm -rf "$T/term"
LORAPIPE_FIT_TEST_SIGNAL=TERM@2 "${RES[@]}" --out "$T/term" -q 2>"$T/err"
rc=$?
[ "$rc" -eq 130 ] && [ "$(jq .step "$T/term/checkpoint-2/state.json" 2>/dev/null)" = 2 ] &&
	ok "SIGTERM: exit 130, checkpoint-2" || notok sigterm "exit $rc: $(ls "$T/term" 2>&1 | tr '\n' ' ')"

# SIGINT (the hook raises it inside the window after checkpoint 4; the window is
# dropped): exit 130, a valid checkpoint-4, and --resume ends as the reference.
rm -rf "$T/int"
LORAPIPE_FIT_TEST_SIGNAL=INT@4 "${RES[@]}" --save-steps 0 --out "$T/int" 2>"$T/err"
rc=$?
if [ "$rc" -ne 130 ]; then notok sigint "exit $rc, expected 130: $(tail -c 300 "$T/err")"
elif [ "$(jq -r '[.format, .step] | @tsv' "$T/int/checkpoint-4/state.json" 2>/dev/null)" != "$(printf 'lorapipe-checkpoint\t4')" ]; then notok sigint "checkpoint-4/state.json: $(ls "$T/int")"
elif [ ! -s "$T/int/checkpoint-4/optimizer.safetensors" ] || [ ! -s "$T/int/checkpoint-4/adapter_model.safetensors" ]; then notok sigint "checkpoint-4 incomplete"
elif ! grep -q 'interrupted: checkpoint-4 written' "$T/err"; then notok sigint "no message: $(tail -c 300 "$T/err")"
else ok "SIGINT: exit 130, checkpoint-4 written whole"; fi
# resuming with other settings is refused, naming the setting; --force goes on
expect resume-other 2 "${RES[@]}" --save-steps 0 --out "$T/int" --resume --lr 1e-3 &&
	stderr_has resume-other 'checkpoint-4/state.json: --lr: 0.005 in the checkpoint, 0.001 now' && ok "resume with another --lr: refused, exit 2"
records 99 24 6 20 > "$T/r2.txt"
SD 64 0 "$T/d2.tok.zst" < "$T/r2.txt"
expect resume-data 2 "${RES[@]/$T\/d.tok.zst/$T/d2.tok.zst}" --save-steps 0 --out "$T/int" --resume &&
	stderr_has resume-data 'fingerprints.data' && ok "resume with other data: refused, exit 2"
if expect resume-int 0 "${RES[@]}" --save-steps 0 --out "$T/int" --resume; then
	cmp -s "$T/ref/adapter_model.safetensors" "$T/int/adapter_model.safetensors" && ok "resume after SIGINT: adapter bitwise identical" ||
		notok resume-int "adapter differs by $(maxdiff "$T/ref/adapter_model.safetensors" "$T/int/adapter_model.safetensors")"
fi
cp -r "$T/kill" "$T/forced" 2>/dev/null
expect resume-force 0 "${RES[@]}" --out "$T/forced" --resume --lr 1e-3 --force -q && ok "--resume --force with another --lr: runs"

# --config: keys are option names, flags win.
echo '{"lr": 0.003, "rank": 2, "target": ["q", "v"], "no-shuffle": true, "max-steps": 2}' > "$T/cfg.json"
if expect config 0 "${FIT[@]}" --config "$T/cfg.json" --rank 3 --out "$T/cfg" -q; then
	[ "$(jq -c '[.lr, .rank, .target, .["no-shuffle"], .["max-steps"], .config != null]' "$T/cfg/training_args.json")" = '[0.003,3,["q_proj","v_proj"],true,2,true]' ] &&
		ok "--config sets options, the command line wins" || notok config "$(jq -c '[.lr, .rank, .target]' "$T/cfg/training_args.json")"
fi

# --init-adapter: rank and targets come from the folder; a conflicting flag is an error.
if expect init 0 "${FIT[@]}" --init-adapter "$T/cfg" --max-steps 1 --out "$T/init" -q; then
	[ "$(jq -c '[.r, .target_modules]' "$T/init/adapter_config.json")" = '[3,["q_proj","v_proj"]]' ] &&
		ok "--init-adapter: its rank and targets" || notok init "$(head -c 200 "$T/init/adapter_config.json")"
fi
bad init-conflict '--rank conflicts with --init-adapter' "${FIT[@]}" --init-adapter "$T/cfg" --rank 8
finish
