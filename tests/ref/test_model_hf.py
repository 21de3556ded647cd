"""Our forward pass (lib/model + lib/forward through tests/ref/model_driver)
against transformers' on tiny random models of each family, generated here.

Models: tinymodels.hf_families (fp32, seeded, weights redrawn with a spread
that makes logits differ far from uniform; written with save_pretrained as
safetensors): llama-gqa-untied, llama-tied-llama3, llama-linear, qwen2-bias,
qwen3-qknorm, gemma3-text (sliding_window 5 < sequence), gemma3-multimodal
(we load its text model; transformers runs the whole model on text-only
input). For each: token ids of lengths 1, 9 and 100 (random, seeded; 100 is
more than one 64-row query block of the attention); case passes when
    max |ours - theirs| / max |theirs| < 1e-4, per sequence
over all n × vocab logits. One sequence of 70 also goes through the KV cache
in pieces of 7 (model_driver --chunk 7), same tolerance.

Frozen formats: the same checkpoints with the seven linear layers of each
layer stored NF4 (bitsandbytes quantize_4bit, blocksize 64, double
quantization), INT8 (int8_vectorwise_quant) or BF16, against transformers run
on the dequantized weights (bitsandbytes' dequantize_4bit and
int8_vectorwise_dequant; the bf16 rounding for BF16), same norm, tolerance
1e-4: the weights are the same bits, only fp32 arithmetic differs.
Seed: $LORAPIPE_SEED or the time, printed on failure.
"""
import os
import sys
import tempfile
import time

import numpy as np

import tinymodels as tm
from tinymodels import hf_logits, our_logits, rel_err, report, say

DRIVER = tm.DRIVER
TOL = tm.TOL
LENGTHS = (1, 9, 100)


def make_models(tmp, torch, tf):
    """tinymodels' hf_families, created and saved: (name, model, folder)."""
    out = []
    for i, (name, cls, cfg) in enumerate(tm.hf_families(tf)):
        model, path = tm.make(tmp, name, cls, cfg, SEED + i, torch)
        out.append((name, model, path))
    return out


LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def dequantized_copy(model, fmt, torch, bnb_f):
    """The model with each text layer's seven projections replaced by their
    NF4 / INT8 / BF16 round trip (embeddings, lm_head and norms untouched)."""
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if not isinstance(mod, torch.nn.Linear) or name.split(".")[-1] not in LINEAR or "vision" in name:
                continue
            w = mod.weight.data.contiguous()
            if fmt == "bf16":
                d = w.to(torch.bfloat16).to(torch.float32)
            elif fmt == "nf4":
                # NF4 blocks run over the flattened tensor, 2-D or not; bitsandbytes
                # 0.50.2's CPU code gets some 2-D shapes wrong on some hosts (an AVX-512 AMD EPYC
                # here: (64, 96), (32, 96), (128, 96) come back off by several absmax),
                # so the round trip is taken on the flat tensor, which it gets right.
                q, st = bnb_f.quantize_4bit(w.reshape(-1), blocksize=64, compress_statistics=True, quant_type="nf4")
                d = bnb_f.dequantize_4bit(q, st).to(torch.float32)
            else:
                q, scale, _ = bnb_f.int8_vectorwise_quant(w)
                d = bnb_f.int8_vectorwise_dequant(q, scale).to(torch.float32)
            mod.weight.data.copy_(d.reshape(w.shape))
    return m


def vocab_of(model):
    return tm.text_config(model.config).vocab_size


def main():
    global SEED
    SEED = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    if not os.access(DRIVER, os.X_OK):
        report(False, "model_driver", f"{DRIVER} is not built (make build/ref/model_driver)")
        return 1
    import torch
    import transformers as tf
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    tmp = tempfile.mkdtemp(prefix="model-hf-")
    t0 = time.time()
    models = make_models(tmp, torch, tf)
    for name, model, path in models:
        V = vocab_of(model)
        errs, why = [], ""
        for n in LENGTHS:
            ids = rng.integers(0, V, size=n).tolist()
            ours, msg = our_logits(path, ids, V)
            if ours is None:
                why = msg
                break
            errs.append(rel_err(ours, hf_logits(model, ids, torch)))
        ok = not why and max(errs) < TOL
        report(ok, f"logits {name}",
               why or f"seed {SEED}: max|ours-hf|/max|hf| per length {dict(zip(LENGTHS, errs))} (tol {TOL})")
        if ok:
            say(f"# {name}: rel err " + ", ".join(f"n={n} {e:.2g}" for n, e in zip(LENGTHS, errs)))
        ids = rng.integers(0, V, size=70).tolist()
        ours, msg = our_logits(path, ids, V, "--chunk", "7")
        e = rel_err(ours, hf_logits(model, ids, torch)) if ours is not None else None
        report(e is not None and e < TOL, f"kv-cache {name}", msg or f"seed {SEED}: rel err {e:.3g} (tol {TOL})")

    try:
        import bitsandbytes.functional as bnb_f
    except Exception as ex:  # noqa: BLE001 - any import failure is the reason to skip
        bnb_f = None
        bnb_why = f"bitsandbytes does not import: {ex}"
    for fmt in ("bf16", "nf4", "int8"):
        for name, model, path in models:
            if name not in ("llama-gqa-untied", "qwen2-bias", "gemma3-text"):
                continue
            case = f"frozen-{fmt} {name}"
            if fmt != "bf16" and bnb_f is None:
                say(f"skip - {case}: {bnb_why}")
                continue
            V = vocab_of(model)
            ref = dequantized_copy(model, fmt, torch, bnb_f)
            ids = rng.integers(0, V, size=17).tolist()
            ours, msg = our_logits(path, ids, V, "--fmt", fmt)
            e = rel_err(ours, hf_logits(ref, ids, torch)) if ours is not None else None
            report(e is not None and e < TOL, case, msg or f"seed {SEED}: rel err {e:.3g} (tol {TOL})")
            if e is not None and e < TOL:
                say(f"# {case}: rel err {e:.2g}")
    say(f"# {time.time() - t0:.1f} s, seed {SEED}")
    return 1 if tm.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
