"""bin/qlora-fit's training loop against a plain torch loop on transformers +
PEFT, step by step, on the tiny random models of tinymodels.hf_families.

Each case: a tiny model saved as a safetensors folder (no tokenizer files, so
qlora-fit skips its tokenizer-fingerprint check), random examples (ids drawn
uniformly, labels -100 on "prompt" segments and equal to the ids on "answer"
segments) written as a token stream by tests/ref/tokstream_driver, and a
starting adapter made by PEFT (get_peft_model, A ~ N(0, 1/in), B ~
N(0, 0.3²/r): nonzero, so the first step already moves the logits) and saved
with save_pretrained. qlora-fit trains from it (--init-adapter, --no-shuffle,
--dropout 0, --logging-steps 1); the torch loop trains the same adapter
loaded with PeftModel.from_pretrained(is_trainable=True) on the same data in
the same order, as qlora-fit's contract says a run goes:
  - rows: with packing, greedy and sequential (a row takes the next examples
    while their total length <= --seq-len); without, one example a row. A
    micro-batch is the next --batch rows, an optimizer step the next
    --grad-accum micro-batches (a window); an epoch's last window may be
    short and still makes a step. --max-steps runs epochs again in the same
    order until that many steps.
  - the loss of a step: the sum over the window's examples of the summed
    cross-entropy of the labels shifted by one inside each example, divided
    by the window's learned tokens; one backward of it. Torch runs each
    example alone, as its own row of a batch padded on the right
    (attention_mask 0, label -100 on the padding): the same as a packed row
    whose examples restart positions and do not attend across;
  - torch.nn.utils.clip_grad_norm_ over the LoRA parameters in PEFT's order
    (not when --max-grad-norm is 0), torch.optim.AdamW(foreach=False),
    transformers.get_scheduler's LambdaLR stepped after each optimizer step
    (step s uses lambda(s)), warm-up ratio turned into ceil(ratio · steps)
    as transformers' TrainingArguments does.
With --quant nf4 the torch side runs on the model whose seven projections are
replaced by their bitsandbytes NF4 round trip (quantize_4bit nf4, blocksize
64, double quantization, on the CPU; qlora-fit's NF4 is bit-identical to it).

Checks per case:
  - every step's logged "loss" (DIR/log.jsonl) within LOSS_TOL relative of
    torch's, the step count and each step's "learned_tokens" equal, the
    logged "grad_norm" (when clipping is on) within LOSS_TOL relative of
    clip_grad_norm_'s and "lr" equal to the schedule's value of that step
    within 1e-9 relative;
  - the check can fail: torch's loss of the last window under the trained
    adapter differs from its loss under the starting one by more than
    10 × LOSS_TOL (a tool that did not train would be caught);
  - PEFT loads DIR (PeftModel.from_pretrained) with no warning about missing
    or unexpected keys, its adapter state dict has exactly the file's keys and
    shapes, and its logits on three of the examples equal those of the
    torch-trained PEFT model within FINAL_TOL (max |d| / max |logits|), and
    differ from the starting adapter's by more than 10 × FINAL_TOL.
Cases: three families (llama-gqa-untied, gemma3-text with its sliding
window, qwen3-qknorm), fp32 and NF4 frozen weights, packing on and off,
batch and accumulation, the last window of an epoch short, --max-steps past
an epoch, cosine / linear / cosine_with_min_lr with warm-up steps or ratio,
weight decay, clipping on and off, other Adam betas and eps, rsLoRA and a
subset of targets taken from the init adapter. Measured agreement: per-step
loss within ~3e-7 relative, final logits within ~1e-6 (1.3e-5 once, with
lr 5e-3): the tolerances are the contract's, far above.
Both sides on THREADS threads. FIT_CASES=0,3 runs only those cases (by index).
Seed: $LORAPIPE_SEED or the time, printed.
"""
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import tinymodels as tm
from tinymodels import report, say

FIT = os.path.join(tm.ROOT, "bin", "qlora-fit")
TOKS = os.path.join(tm.ROOT, "build", "ref", "tokstream_driver")
LOSS_TOL = 1e-3
FINAL_TOL = 1e-3
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
THREADS = 1  # tiny models: a second thread only adds contention on a shared machine

# name, family, settings. n: examples (for "epochs" cases: chosen so an epoch
# has `windows` steps and a short last window).
CASES = [
    dict(name="llama f32 packed accum", family="llama-gqa-untied", quant="none", packing=True, seq_len=40,
         batch=2, accum=2, epochs=3, windows=10, lens=(5, 18), lr=2e-3, scheduler="cosine", warmup=3,
         wd=0.01, clip=1.0, rank=4, alpha=8, rslora=False, targets=ALL7),
    dict(name="llama f32 unpacked accum", family="llama-gqa-untied", quant="none", packing=False, seq_len=24,
         batch=1, accum=3, max_steps=30, n=25, lens=(4, 24), lr=1e-3, scheduler="linear", warmup_ratio=0.1,
         wd=0.0, clip=1.0, rank=4, alpha=8, rslora=False, targets=ALL7),
    dict(name="llama nf4 packed", family="llama-gqa-untied", quant="nf4", packing=True, seq_len=48,
         batch=1, accum=4, max_steps=30, n=70, lens=(5, 20), lr=2e-3, scheduler="cosine_with_min_lr",
         warmup=2, min_lr_ratio=0.1, wd=0.1, clip=0.5, rank=8, alpha=16, rslora=False, targets=ALL7),
    dict(name="gemma3 f32 packed rslora q,v,down no-clip", family="gemma3-text", quant="none", packing=True,
         seq_len=36, batch=3, accum=1, max_steps=30, n=100, lens=(3, 16), lr=5e-3, scheduler="cosine", warmup=0,
         wd=0.0, clip=0.0, rank=4, alpha=6, rslora=True, targets=["q_proj", "v_proj", "down_proj"]),
    dict(name="qwen3 nf4 packed batch", family="qwen3-qknorm", quant="nf4", packing=True, seq_len=32,
         batch=2, accum=1, epochs=2, windows=15, lens=(4, 16), lr=3e-3, scheduler="linear", warmup=0,
         wd=0.0, clip=2.0, rank=8, alpha=8, rslora=False, targets=["q_proj", "k_proj", "o_proj", "up_proj"],
         betas=(0.8, 0.95), eps=1e-6),
    dict(name="gemma3 nf4 unpacked", family="gemma3-text", quant="nf4", packing=False, seq_len=20,
         batch=2, accum=2, epochs=3, windows=10, lens=(4, 20), lr=2e-3, scheduler="cosine", warmup=2,
         wd=0.01, clip=1.0, rank=4, alpha=8, rslora=False, targets=ALL7),
]
MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# ---- data and the run's plan ----

def make_example(rng, vocab, lo, hi):
    """(ids, labels): a random length in [lo, hi], alternating segments of
    -100 ("prompt", first) and learned ids ("answer"), at least one learned
    label after the first position."""
    n = int(rng.integers(lo, hi + 1))
    ids = rng.integers(0, vocab, size=n)
    labels = np.full(n, -100)
    pos, learn = 0, False
    while pos < n:
        seg = int(rng.integers(2, 6) if not learn else rng.integers(2, 8))
        if learn:
            labels[pos:pos + seg] = ids[pos:pos + seg]
        pos += seg
        learn = not learn
    if not (labels[1:] >= 0).any():
        labels[-1] = ids[-1]
    return ids.tolist(), labels.tolist()


def rows_of(examples, seq_len, packing):
    """Lists of example indices, one per row, as qlora-fit's contract builds them."""
    if not packing:
        return [[i] for i in range(len(examples))]
    rows, cur, used = [], [], 0
    for i, (ids, _) in enumerate(examples):
        if cur and used + len(ids) > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += len(ids)
    if cur:
        rows.append(cur)
    return rows


def windows_of(rows, batch, accum):
    per = batch * accum
    return [[i for r in rows[k:k + per] for i in r] for k in range(0, len(rows), per)]


def learned(labels):
    return sum(1 for x in labels[1:] if x >= 0)


def make_data(rng, vocab, case):
    """Examples for the case; for an "epochs" case enough that an epoch has
    case["windows"] steps, the last one short."""
    lo, hi = case["lens"]
    if "n" in case:
        return [make_example(rng, vocab, lo, hi) for _ in range(case["n"])]
    per = case["batch"] * case["accum"]
    ex = []
    while True:
        ex.append(make_example(rng, vocab, lo, hi))
        rows = rows_of(ex, case["seq_len"], case["packing"])
        if len(rows) == (case["windows"] - 1) * per + max(per - 1, 1):
            return ex


def plan(examples, case):
    """[(epoch index, [example indices])] per optimizer step, and the total."""
    wins = windows_of(rows_of(examples, case["seq_len"], case["packing"]), case["batch"], case["accum"])
    steps = []
    if "max_steps" in case:
        e = 0
        while len(steps) < case["max_steps"]:
            steps += [(e, w) for w in wins][: case["max_steps"] - len(steps)]
            e += 1
    else:
        for e in range(case["epochs"]):
            steps += [(e, w) for w in wins]
    return steps


def warmup_steps(case, total):
    if "warmup_ratio" in case:
        return math.ceil(total * case["warmup_ratio"])
    return case.get("warmup", 0)


# ---- torch ----

def named_copy(model, folder):
    m = copy.deepcopy(model)
    m.name_or_path = folder
    m.config._name_or_path = folder
    return m


def init_adapter(torch, peft, model, folder, case, out, seed):
    """get_peft_model with random A and nonzero random B, saved to out."""
    lc = peft.LoraConfig(r=case["rank"], lora_alpha=case["alpha"], lora_dropout=0.0, use_rslora=case["rslora"],
                         target_modules=list(case["targets"]), task_type="CAUSAL_LM", bias="none")
    pm = peft.get_peft_model(named_copy(model, folder), lc)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5)
            elif "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 * p.shape[1] ** -0.5)
    pm.save_pretrained(out)


def load_adapter(torch, peft, base, folder, trainable=False):
    """PeftModel.from_pretrained on a copy of base: (model, key warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder, is_trainable=trainable)
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower()
           or "unexpected" in str(w.message).lower()]
    return pm, bad


def window_loss(torch, pm, examples, idx):
    """(sum of token losses over the window's examples / learned tokens, learned).
    The examples run as one batch, each its own row padded on the right
    (attention_mask 0 and label -100 on the padding): every example alone,
    positions from 0, no attention across examples."""
    total = sum(learned(examples[i][1]) for i in idx)
    width = max(len(examples[i][0]) for i in idx)
    ids = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(examples[i][0])
        ids[r, :n] = torch.tensor(examples[i][0])
        labels[r, :n] = torch.tensor(examples[i][1])
        mask[r, :n] = 1
    logits = pm(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss / total, total


def torch_train(torch, tf, peft, base, init_dir, examples, steps, case):
    """The reference run: (per-step dicts, trained model)."""
    pm, bad = load_adapter(torch, peft, base, init_dir, trainable=True)
    assert not bad, bad
    pm.eval()  # dropout is 0; eval keeps transformers off any training-only path
    params = [p for _, p in pm.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in pm.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=case["lr"], betas=case.get("betas", (0.9, 0.999)), eps=case.get("eps", 1e-8),
                            weight_decay=case["wd"], foreach=False)
    total = len(steps)
    kw = {"min_lr_rate": case["min_lr_ratio"]} if case["scheduler"] == "cosine_with_min_lr" else None
    sched = tf.get_scheduler(case["scheduler"], opt, num_warmup_steps=warmup_steps(case, total),
                             num_training_steps=total, scheduler_specific_kwargs=kw)
    out = []
    for s, (epoch, idx) in enumerate(steps):
        loss, n = window_loss(torch, pm, examples, idx)
        loss.backward()
        if case["clip"] > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, case["clip"]))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        out.append(dict(loss=float(loss.detach()), learned=n, grad_norm=norm, lr=lr, epoch=epoch))
    return out, pm


def logits_of(torch, pm, seqs):
    with torch.no_grad():
        return np.concatenate([pm(input_ids=torch.tensor([s]), use_cache=False).logits[0].double().numpy()
                               for s in seqs])


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---- ours ----

def write_stream(examples, vocab, path):
    text = "".join(json.dumps({"ids": ids, "labels": lab}) + "\n" for ids, lab in examples)
    p = subprocess.run([TOKS, str(vocab), "0", path], input=text.encode(), capture_output=True)
    if p.returncode != 0:
        raise RuntimeError("tokstream_driver: " + p.stderr.decode(errors="replace")[:300])


def fit_args(case, folder, data, init_dir, out):
    a = [FIT, "--model", folder, "--data", data, "--out", out, "--init-adapter", init_dir,
         "--no-shuffle", "--dropout", "0", "--logging-steps", "1", "--quant", case["quant"],
         "--seq-len", str(case["seq_len"]), "--batch", str(case["batch"]), "--grad-accum", str(case["accum"]),
         "--lr", repr(case["lr"]), "--scheduler", case["scheduler"], "--weight-decay", repr(case["wd"]),
         "--max-grad-norm", repr(case["clip"]), "--seed", "1", "--device", "cpu", "--threads", str(THREADS)]
    if not case["packing"]:
        a.append("--no-packing")
    a += ["--max-steps", str(case["max_steps"])] if "max_steps" in case else ["--epochs", str(case["epochs"])]
    if "warmup_ratio" in case:
        a += ["--warmup-ratio", repr(case["warmup_ratio"])]
    else:
        a += ["--warmup-steps", str(case.get("warmup", 0))]
    if "min_lr_ratio" in case:
        a += ["--min-lr-ratio", repr(case["min_lr_ratio"])]
    if "betas" in case:
        a += ["--adam-beta1", repr(case["betas"][0]), "--adam-beta2", repr(case["betas"][1])]
    if "eps" in case:
        a += ["--adam-eps", repr(case["eps"])]
    return a


def read_log(path):
    steps, evals = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                (evals if "val_loss" in r else steps).append(r)
    return steps, evals


def safetensors_keys(path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def run_case(torch, tf, peft, bnb_f, dequantized_copy, case, models, tmp, seed, k):
    name = case["name"]
    model, folder = models[case["family"]]
    vocab = tm.text_config(model.config).vocab_size
    rng = np.random.default_rng(seed * 31 + k)
    examples = make_data(rng, vocab, case)
    steps = plan(examples, case)
    cdir = os.path.join(tmp, f"case{k}")
    os.makedirs(cdir)
    data = os.path.join(cdir, "train.tok.zst")
    write_stream(examples, vocab, data)
    init_dir = os.path.join(cdir, "init")
    init_adapter(torch, peft, model, folder, case, init_dir, seed * 17 + k)
    base = dequantized_copy(model, "nf4", torch, bnb_f) if case["quant"] == "nf4" else model

    out = os.path.join(cdir, "out")
    t0 = time.time()
    p = subprocess.run(fit_args(case, folder, data, init_dir, out), capture_output=True)
    t_ours = time.time() - t0
    if p.returncode != 0:
        report(False, f"fit {name}", f"qlora-fit exited {p.returncode}: "
               + p.stderr.decode(errors="replace").strip()[-600:])
        return None
    t0 = time.time()
    ref, trained = torch_train(torch, tf, peft, base, init_dir, examples, steps, case)
    t_torch = time.time() - t0
    try:
        ours, _ = read_log(os.path.join(out, "log.jsonl"))
    except (OSError, ValueError) as ex:
        report(False, f"fit {name}: log.jsonl", f"{type(ex).__name__}: {ex}")
        return None

    # step by step
    n_ok = len(ours) == len(ref)
    report(n_ok, f"fit {name}: {len(ref)} steps logged",
           f"log.jsonl has {len(ours)} step lines, the contract's plan {len(ref)}")
    worst, where, n_bad = 0.0, "", 0
    bad_learned, bad_norm, bad_lr, bad_step = [], 0.0, [], []
    for s, (o, r) in enumerate(zip(ours, ref)):
        if o.get("step") != s + 1:
            bad_step.append((s + 1, o.get("step")))
        e = abs(o["loss"] - r["loss"]) / abs(r["loss"]) if isinstance(o.get("loss"), (int, float)) else math.inf
        if not e <= worst:
            worst, where = e, f"step {s + 1}: ours {o.get('loss')} torch {r['loss']:.7g}"
        n_bad += not e < LOSS_TOL
        if o.get("learned_tokens") != r["learned"]:
            bad_learned.append((s + 1, o.get("learned_tokens"), r["learned"]))
        if case["clip"] > 0:
            g = o.get("grad_norm")
            eg = abs(g - r["grad_norm"]) / r["grad_norm"] if isinstance(g, (int, float)) else math.inf
            bad_norm = max(bad_norm, eg)
        lr = o.get("lr")
        if not (isinstance(lr, (int, float)) and abs(lr - r["lr"]) <= 1e-9 * max(abs(r["lr"]), 1e-30)):
            bad_lr.append((s + 1, lr, r["lr"]))
    report(n_ok and n_bad == 0, f"fit {name}: per-step loss equals torch + PEFT's",
           f"seed {seed}: {n_bad} steps off by >= {LOSS_TOL} relative; worst {worst:.3g} ({where})")
    report(not bad_learned and not bad_step, f"fit {name}: learned_tokens and step numbers per step",
           f"(step, ours, torch) learned differ at {bad_learned[:4]}; (expected, logged) step at {bad_step[:4]}")
    if case["clip"] > 0:
        report(bad_norm < LOSS_TOL, f"fit {name}: grad_norm equals clip_grad_norm_'s",
               f"worst relative difference {bad_norm:.3g} (tol {LOSS_TOL})")
    report(not bad_lr, f"fit {name}: lr equals the schedule's value of each step",
           f"(step, ours, get_scheduler) {bad_lr[:4]}")

    # the comparison can fail: training moved the loss by much more than the tolerance
    last = steps[-1][1]
    start, _ = load_adapter(torch, peft, base, init_dir)
    with torch.no_grad():
        l0 = float(window_loss(torch, start.eval(), examples, last)[0])
        l1 = float(window_loss(torch, trained, examples, last)[0])
    moved = abs(l1 - l0) / abs(l0)
    report(moved > 10 * LOSS_TOL, f"fit {name}: training moves the loss beyond the tolerance",
           f"last window's torch loss {l0:.5g} at the start, {l1:.5g} trained ({moved:.3g} < {10 * LOSS_TOL})")

    # the adapter qlora-fit wrote, in PEFT
    seqs = [examples[i][0] for i in range(3)]
    try:
        pm, bad = load_adapter(torch, peft, base, out)
    except Exception as ex:  # noqa: BLE001 - PEFT refusing the folder is the failure
        report(False, f"fit {name}: PEFT loads the adapter", f"{type(ex).__name__}: {ex}"[:500])
        return (name, worst, None, t_ours, t_torch)
    report(not bad, f"fit {name}: PEFT loads the adapter with no missing/unexpected-key warning",
           f"PEFT warned: {bad}"[:500])
    theirs = {k2: tuple(v.shape) for k2, v in peft.get_peft_model_state_dict(pm).items()}
    mine = safetensors_keys(os.path.join(out, "adapter_model.safetensors"))
    report(theirs == mine, f"fit {name}: the adapter's keys and shapes are PEFT's",
           f"only ours {sorted(set(mine) - set(theirs))[:3]}, only PEFT's {sorted(set(theirs) - set(mine))[:3]}")
    a = logits_of(torch, pm.eval(), seqs)
    b = logits_of(torch, trained, seqs)
    c = logits_of(torch, start, seqs)
    e_final, e_start = rel(a, b), rel(c, b)
    report(e_final < FINAL_TOL and e_start > 10 * FINAL_TOL, f"fit {name}: trained adapter's logits equal torch's",
           f"max|ours-torch|/max|torch| {e_final:.3g} (tol {FINAL_TOL}); start vs trained {e_start:.3g} "
           f"(must exceed {10 * FINAL_TOL})")
    return (name, worst, e_final, t_ours, t_torch)


def main():
    seed = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    for path, what in ((FIT, "make bin/qlora-fit"), (TOKS, "make build/ref/tokstream_driver")):
        if not os.access(path, os.X_OK):
            report(False, "fit: tools built", f"{path} is not built ({what})")
            return 1
    import peft
    import torch
    import transformers as tf
    import bitsandbytes.functional as bnb_f
    from test_model_hf import dequantized_copy
    torch.set_num_threads(THREADS)
    tmp = tempfile.mkdtemp(prefix="fit-torch-")
    t0 = time.time()
    families = {n: (cls, cfg) for n, cls, cfg in tm.hf_families(tf)}
    models = {}
    for i, fam in enumerate(sorted({c["family"] for c in CASES})):
        cls, cfg = families[fam]
        models[fam] = tm.make(tmp, fam, cls, cfg, seed + i, torch)
    summary = []
    only = os.environ.get("FIT_CASES")
    for k, case in enumerate(CASES):
        if only and str(k) not in only.split(","):
            continue
        r = run_case(torch, tf, peft, bnb_f, dequantized_copy, case, models, tmp, seed, k)
        if r:
            summary.append(r)
    for name, worst, e_final, t_ours, t_torch in summary:
        ef = f"{e_final:.2g}" if e_final is not None else "n/a"
        say(f"# {name}: per-step loss max rel diff {worst:.2g}, final logits {ef}; "
            f"qlora-fit {t_ours:.1f} s, torch {t_torch:.1f} s")
    say(f"# {time.time() - t0:.1f} s, seed {seed}")
    if tm.failed():
        say(f"# work folder kept: {tmp}")
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if tm.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
