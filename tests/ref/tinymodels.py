"""Tiny random transformers models of each family, for the reference tests of
lib/model (test_model_hf.py runs them from their safetensors folders,
test_model_gguf.py writes them as GGUF): their configurations, their seeded
creation, save_pretrained, the GGUF writer (write_gguf, as llama.cpp's
converter writes one), transformers' logits and ours (through
tests/ref/model_driver), and the ok / not ok lines both print. Also the
seeds of tests/fuzz/fuzz_model.c:
    python tests/ref/tinymodels.py --fuzz-seeds tests/fuzz/corpus/model

Every model is fp32, eager attention, with each weight redrawn from a seeded
generator with a spread that makes logits differ far from uniform (redraw).

hf_families — test_model_hf's seven, 3 layers of width 64, vocabulary 211:
  llama-gqa-untied     4 heads / 2 kv heads, separate lm_head
  llama-tied-llama3    tied embeddings, rope_scaling llama3
  llama-linear         rope_scaling linear, 1 kv head (MQA)
  qwen2-bias           q/k/v bias, untied
  qwen3-qknorm         q/k RMSNorm, head_dim 24 != hidden/heads (16), tied
  gemma3-text          Gemma3ForCausalLM: layer_types sliding/full mixed,
                       sliding_window 5, rope_local_base_freq,
                       query_pre_attn_scalar, head_dim 32
  gemma3-multimodal    Gemma3ForConditionalGeneration (tiny SigLIP tower)
gguf_families — test_model_gguf's four, one per GGUF architecture, 2 layers
(Gemma 7) of width 64, vocabulary 160, bos 1, eos 2:
  llama   4 heads / 2 kv heads, untied lm_head
  qwen2   q/k/v bias, tied
  qwen3   q/k norm, head_dim 128 != hidden/heads (transformers' GGUF loader
          does not read key_length for qwen3 and falls back to Qwen3Config's 128)
  gemma3  7 layers (llama.cpp's fixed pattern: 5 sliding, 1 full, 1 sliding),
          sliding_window 4, head_dim = query_pre_attn_scalar = 256 (GGUF
          cannot carry another query_pre_attn_scalar)
gguf_llama3 — a llama of the GGUF size with Llama 3.1's rope_scaling
  (llama3, factor 8, low 1, high 4) on an original context of 32 positions,
  given at the top level of the config too: convert_hf_to_gguf.py reads it
  there (8192 when absent) to compute rope_freqs.weight, transformers in
  rope_scaling; 32 makes the scaling change most frequencies within a few
  dozen positions.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "model_driver")
TOL = 1e-4
_failed = [False]


def say(line):
    print(line, flush=True)


def report(ok, name, why=""):
    if ok:
        say(f"ok - {name}")
    else:
        _failed[0] = True
        say(f"not ok - {name}: {why}")


def failed():
    """Whether a case has failed so far."""
    return _failed[0]


def rel_err(a, b):
    """max |a - b| / max |b|, in float64."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


# ---- configurations ----

def hf_families(tf):
    """(name, model class, config) of test_model_hf's models."""
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
    return specs


GGUF_COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                   bos_token_id=1, eos_token_id=2)


def gguf_families(tf):
    """(name, GGUF architecture, model class, config) of test_model_gguf's models."""
    common = GGUF_COMMON
    return [
        ("llama", "llama", tf.LlamaForCausalLM,
         tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0)),
        ("qwen2", "qwen2", tf.Qwen2ForCausalLM,
         tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0)),
        ("qwen3", "qwen3", tf.Qwen3ForCausalLM,
         tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=128, tie_word_embeddings=False,
                        rope_theta=1000000.0)),
        ("gemma3", "gemma3", tf.Gemma3ForCausalLM,
         tf.Gemma3TextConfig(**{**common, "num_hidden_layers": 7}, num_key_value_heads=1, head_dim=256,
                             query_pre_attn_scalar=256, sliding_window=4, rope_theta=1000000.0,
                             rope_local_base_freq=10000.0)),
    ]


def gguf_llama3(tf, scaled=True):
    """(name, GGUF architecture, model class, config) of the llama3-scaled
    llama; scaled False: the same without rope_scaling."""
    extra = {}
    if scaled:
        extra = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                     original_max_position_embeddings=32)
    return ("llama3-rope", "llama", tf.LlamaForCausalLM,
            tf.LlamaConfig(**GGUF_COMMON, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
                           **extra))


def text_config(cfg):
    """The text model's part of a config (text_config of a multimodal Gemma 3)."""
    return getattr(cfg, "text_config", None) or cfg


# ---- models ----

def redraw(model, gen, torch, plus_one):
    """Weights with some spread: linear ~ N(0, 1/in), embeddings N(0, 1),
    biases N(0, 0.1²), norms 1 + N(0, 0.2²) (Gemma's (1 + w): w ~ N(0, 0.2²)),
    a vision tower N(0, 0.02²)."""
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


def create(cls, cfg, seed, torch):
    """cls(cfg) in fp32 and eval mode, eager attention, weights redrawn from
    seed, tied embeddings tied."""
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32).eval()
    redraw(model, torch.Generator().manual_seed(seed), torch, plus_one=cfg.model_type.startswith("gemma"))
    if getattr(model.config, "tie_word_embeddings", False) or \
            getattr(text_config(model.config), "tie_word_embeddings", False):
        model.tie_weights()
    return model


def make(tmp, name, cls, cfg, seed, torch):
    """create(), saved with save_pretrained (safetensors) as the folder
    tmp/name: (model, folder)."""
    model = create(cls, cfg, seed, torch)
    folder = os.path.join(tmp, name)
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


# ---- as GGUF ----

def permute_qk(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute: per head, rotate-half order
    (first halves, then second halves) to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_freqs(cfg, head_dim):
    """rope_freqs.weight for a llama3 rope_scaling, as convert_hf_to_gguf.py's
    llama converter derives it: the fp32 inverse frequencies
    base^-(2i / head_dim), their wavelengths 2π / f, and per frequency the
    divisor 1 below original / high_freq_factor, factor above
    original / low_freq_factor, 1 / ((1 - s) / factor + s) between, with
    s = (original / wavelength - low_freq_factor) / (high - low); all in fp32
    (torch scalars), the original context read from the config's top level
    (8192 when absent) as the converter reads it."""
    import math

    import torch
    rs = cfg.rope_scaling
    factor = rs.get("factor", 8.0)
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    orig = cfg.to_dict().get("original_max_position_embeddings", 8192)
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    wavelen = 2 * math.pi / inv
    s = (orig / wavelen - low) / (high - low)
    between = 1 / ((1 - s) / factor + s)
    out = torch.where(wavelen < orig / high, torch.ones_like(inv),
                      torch.where(wavelen > orig / low, torch.full_like(inv, factor), between))
    return out.to(torch.float32).numpy()


def write_gguf(path, arch, cfg, sd, qtype, gguf):
    """The model of cfg with state dict sd (HF name -> fp32 numpy array) as
    GGUF, converted the way llama.cpp's convert_hf_to_gguf.py converts it:
    {arch}.* keys, gguf-py's tensor names (tensor_mapping.py), llama q/k rows
    permuted per head (LlamaModel.permute), Gemma norms stored as 1 + w, a
    llama3 rope_scaling as rope_freqs.weight; 1-D tensors F32, the 2-D ones
    qtype: F32, F16 or Q8_0 (gguf-py's quantizer)."""
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        w.add_sliding_window(cfg.sliding_window)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    if arch == "llama" and (getattr(cfg, "rope_scaling", None) or {}).get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(cfg, head_dim))
    for hf, x in sd.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name, hf
        x = x.astype(np.float32)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            x = permute_qk(x, cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads)
        if arch == "gemma3" and hf.endswith("norm.weight"):
            x = x + np.float32(1)
        if x.ndim == 1 or qtype == "F32":
            w.add_tensor(name, np.ascontiguousarray(x))
        elif qtype == "F16":
            w.add_tensor(name, np.ascontiguousarray(x.astype(np.float16)))
        else:
            t = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(x), t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- logits ----

def hf_logits(model, ids, torch):
    """transformers' logits of one sequence, n × vocab, float64."""
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        return model(input_ids=x, use_cache=False).logits[0].float().numpy().astype(np.float64)


def our_logits(path, ids, vocab, *flags):
    """model_driver's logits of one sequence, n × vocab fp32, and ''; or None
    and why."""
    p = subprocess.run([DRIVER, "logits", path, "--threads", "2", *flags],
                       input=" ".join(map(str, ids)).encode(), capture_output=True)
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip()[:400]
    a = np.frombuffer(p.stdout, dtype="<f4")
    if a.size != len(ids) * vocab:
        return None, f"{a.size} values, expected {len(ids)} × {vocab}"
    return a.reshape(len(ids), vocab), ""


# ---- seeds of tests/fuzz/fuzz_model.c ----

# (name, GGUF architecture, model class, config class, config): the same
# configurations as fuzz_model.c's config.json texts, which load the
# safetensors seeds. A few KB each.
_FUZZ_COMMON = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
FUZZ_FAMILIES = [
    ("llama", "llama", "LlamaForCausalLM", "LlamaConfig",
     dict(_FUZZ_COMMON, num_key_value_heads=1, rope_theta=500000.0, tie_word_embeddings=False,
          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 16}, original_max_position_embeddings=16)),
    ("qwen2", "qwen2", "Qwen2ForCausalLM", "Qwen2Config",
     dict(_FUZZ_COMMON, num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True)),
    ("qwen3", "qwen3", "Qwen3ForCausalLM", "Qwen3Config",
     dict(_FUZZ_COMMON, num_key_value_heads=1, head_dim=8, rope_theta=1000000.0, tie_word_embeddings=False)),
    ("gemma3", "gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig",
     dict(_FUZZ_COMMON, num_hidden_layers=2, num_key_value_heads=1, head_dim=4, rope_theta=1000000.0,
          rope_local_base_freq=10000.0, query_pre_attn_scalar=4, sliding_window=2,
          layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)),
]


def fuzz_seeds(out):
    """Writes fuzz_model's seeds into out: first byte (fuzz_model.c's
    selector) then a file. gguf-NAME-TYPE: each family as GGUF F32 and F16,
    and a llama of width 32 in Q8_0 (loaded as NF4); st-NAME: each family's
    model.safetensors (st-llama-nf4: loaded as NF4 with bf16 embeddings);
    dq-TYPE: two blocks of random bytes of each supported GGUF type."""
    import gguf
    import torch
    import transformers as tf
    os.makedirs(out, exist_ok=True)

    def put(name, first, path=None, data=b""):
        if path:
            with open(path, "rb") as f:
                data = f.read()
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([first]) + data)

    with tempfile.TemporaryDirectory() as tmp:
        fams = list(enumerate(FUZZ_FAMILIES))
        fams.append((0, ("llama-wide", "llama", "LlamaForCausalLM", "LlamaConfig",
                         dict(FUZZ_FAMILIES[0][4], hidden_size=32, intermediate_size=32))))
        for k, (name, arch, cls, conf, kw) in fams:
            cfg = getattr(tf, conf)(**kw)
            model, folder = make(tmp, name, getattr(tf, cls), cfg, 4000 + len(name) + k, torch)
            sd = {n: v.detach().numpy().copy() for n, v in model.state_dict().items()}
            for q in (("Q8_0",) if name == "llama-wide" else ("F32", "F16")):
                path = os.path.join(tmp, f"{name}-{q}.gguf")
                write_gguf(path, arch, cfg, sd, q, gguf)
                put(f"gguf-{name}-{q}", 0x20 if q == "Q8_0" else 0, path)
            if name != "llama-wide":
                put(f"st-{name}", 1 | k << 2, os.path.join(folder, "model.safetensors"))
        put("st-llama-nf4", 1 | 2 << 4 | 0x40, os.path.join(tmp, "llama", "model.safetensors"))
    rng = np.random.default_rng(4000)
    for t in gguf.GGMLQuantizationType:
        if t.name not in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                          "Q5_K", "Q6_K"):
            continue
        size = gguf.GGML_QUANT_SIZES[t][1]
        put(f"dq-{t.name}", 2, data=bytes([int(t)]) + rng.integers(0, 256, size=2 * size, dtype=np.uint8).tobytes())


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--fuzz-seeds":
        sys.exit("usage: tinymodels.py --fuzz-seeds DIR   (tests/fuzz/corpus/model)")
    fuzz_seeds(sys.argv[2])
