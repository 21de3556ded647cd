"""Our forward pass (lib/model + lib/forward through tests/ref/model_driver)
against transformers' on tiny random models of each family, generated here.

Models (fp32, seeded, weights redrawn with a spread that makes logits differ
far from uniform; written with save_pretrained as safetensors):
  llama-gqa-untied     4 heads / 2 kv heads, separate lm_head
  llama-tied-llama3    tied embeddings, rope_scaling llama3
  llama-linear         rope_scaling linear, 1 kv head (MQA)
  qwen2-bias           q/k/v bias, untied
  qwen3-qknorm         q/k RMSNorm, head_dim 24 != hidden/heads (16), tied
  gemma3-text          Gemma3ForCausalLM: layer_types sliding/full mixed,
                       sliding_window 5 < sequence, rope_local_base_freq,
                       query_pre_attn_scalar, head_dim 32
  gemma3-multimodal    Gemma3ForConditionalGeneration (tiny SigLIP tower): we
                       load its text model; transformers runs the whole model
                       on text-only input
For each: token ids of lengths 1, 9 and 100 (random, seeded; 100 is more than
one 64-row query block of the attention); case passes when
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
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "model_driver")
TOL = 1e-4
LENGTHS = (1, 9, 100)
failed = False


def say(line):
    print(line, flush=True)


def report(ok, name, why=""):
    global failed
    if ok:
        say(f"ok - {name}")
    else:
        failed = True
        say(f"not ok - {name}: {why}")


def rel_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def redraw(model, gen, torch, plus_one):
    """Weights with some spread: linear ~ N(0, 1/in), embeddings N(0, 1),
    biases N(0, 0.1²), norms 1 + N(0, 0.2²) (Gemma's (1 + w): w ~ N(0, 0.2²))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name or "multi_modal" in name:
                p.normal_(0, 0.02, generator=gen)
            elif "norm" in name:
                p.normal_(0 if plus_one else 1, 0.2, generator=gen)
            elif name.endswith("bias"):
                p.normal_(0, 0.1, generator=gen)
            elif "embed" in name:
                p.normal_(0, 1.0, generator=gen)
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5, generator=gen)
            else:
                p.normal_(0, 0.1, generator=gen)


def make_models(tmp, torch, tf):
    common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6)
    specs = [
        ("llama-gqa-untied", tf.LlamaForCausalLM,
         tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0)),
        ("llama-tied-llama3", tf.LlamaForCausalLM,
         tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
        ("llama-linear", tf.LlamaForCausalLM,
         tf.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=10000.0,
                        rope_scaling={"rope_type": "linear", "factor": 4.0})),
        ("qwen2-bias", tf.Qwen2ForCausalLM,
         tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1000000.0)),
        ("qwen3-qknorm", tf.Qwen3ForCausalLM,
         tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=24, tie_word_embeddings=True,
                        rope_theta=1000000.0)),
    ]
    gemma_text = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                      rms_norm_eps=1e-6, query_pre_attn_scalar=24, sliding_window=5, rope_theta=10000.0,
                      rope_local_base_freq=100.0,
                      layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    specs.append(("gemma3-text", tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(**gemma_text)))
    mm = tf.Gemma3Config(text_config=gemma_text,
                         vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=28, patch_size=14),
                         mm_tokens_per_image=4)
    specs.append(("gemma3-multimodal", tf.Gemma3ForConditionalGeneration, mm))
    out = []
    for i, (name, cls, cfg) in enumerate(specs):
        torch.manual_seed(1000 + i)
        cfg._attn_implementation = "eager"
        model = cls(cfg).to(torch.float32).eval()
        gen = torch.Generator().manual_seed(SEED + i)
        redraw(model, gen, torch, plus_one=name.startswith("gemma"))
        if getattr(model.config, "tie_word_embeddings", False) or \
                getattr(getattr(model.config, "text_config", None), "tie_word_embeddings", False):
            model.tie_weights()
        path = os.path.join(tmp, name)
        model.save_pretrained(path, safe_serialization=True)
        out.append((name, model, path))
    return out


def hf_logits(model, ids, torch):
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        return model(input_ids=x, use_cache=False).logits[0].float().numpy().astype(np.float64)


def our_logits(path, ids, vocab, *flags):
    p = subprocess.run([DRIVER, "logits", path, "--threads", "2", *flags],
                       input=" ".join(map(str, ids)).encode(), capture_output=True)
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip()[:400]
    a = np.frombuffer(p.stdout, dtype="<f4")
    if a.size != len(ids) * vocab:
        return None, f"{a.size} values, expected {len(ids)} × {vocab}"
    return a.reshape(len(ids), vocab), ""


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
                q, st = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                d = bnb_f.dequantize_4bit(q, st).to(torch.float32)
            else:
                q, scale, _ = bnb_f.int8_vectorwise_quant(w)
                d = bnb_f.int8_vectorwise_dequant(q, scale).to(torch.float32)
            mod.weight.data.copy_(d.reshape(w.shape))
    return m


def vocab_of(model):
    cfg = getattr(model.config, "text_config", None) or model.config
    return cfg.vocab_size


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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
