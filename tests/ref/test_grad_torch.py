"""Our training backward (lib/train + lib/backend_cpu_grad through
tests/ref/grad_driver) against torch autograd on transformers + PEFT, on the
tiny random models of tinymodels.hf_families, all seven (gemma3-multimodal:
we train its text model; PEFT's targets are limited to the language model,
the vision tower's q/k/v_proj left alone).

The reference is transformers' model wrapped by PEFT's get_peft_model
(LoraConfig r, lora_alpha, target_modules, lora_dropout 0, use_rslora as
set), every lora_A / lora_B loaded with the same random nonzero values as
ours (A ~ N(0, 1/in), B ~ N(0, 0.3²/rank): both A's and B's gradients are
nonzero). The batch is 3 examples (lengths 11, 7, 14 — longer than Gemma 3's
sliding window of 5) with some labels -100; torch runs each example alone,
from inputs_embeds = embed_tokens(ids) (Gemma's scaling included) with
requires_grad, and the loss is the sum over examples of the summed
cross-entropy of the shifted labels divided by the total learned tokens.
That is what a packed row computes (positions restart, no attention across
examples), so the same reference serves ours packed and unpacked (unpacked:
one train_step per example, gradients accumulated with the same scale).

Per case: for every LoRA tensor (each A and each B of each layer and target)
and for the input-embedding gradient, max |ours - torch| / max |torch| < 1e-4
(the largest over tensors is printed); the loss within 1e-5 relative. Cases
per family: packing off/on × gradient checkpointing off/on, all seven
targets; a subset of targets with rsLoRA; NF4 frozen weights (against torch
on bitsandbytes' dequantized weights, as test_model_hf does) on three
families. Also: the packed loss equals the unpacked one within 1e-6
relative, and train_logits equals model_forward (grad_driver logits).
Seed: $LORAPIPE_SEED or the time, printed.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import tinymodels as tm
from tinymodels import report, say

DRIVER = os.path.join(tm.ROOT, "build", "ref", "grad_driver")
TOL = 1e-4
LOSS_TOL = 1e-5
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
LENGTHS = (11, 7, 14)
RANK, ALPHA = 4, 8.0


def make_examples(rng, vocab):
    """[(ids, labels)]: labels = ids with a prompt of 2-4 tokens and a few
    random positions set to -100."""
    out = []
    for n in LENGTHS:
        ids = rng.integers(0, vocab, size=n)
        labels = ids.copy()
        labels[: rng.integers(2, 5)] = -100
        labels[rng.random(n) < 0.15] = -100
        out.append((ids.tolist(), labels.tolist()))
    return out


def batch_text(examples):
    parts = [str(len(examples))]
    for ids, labels in examples:
        parts += [str(len(ids)), " ".join(map(str, ids)), " ".join(map(str, labels))]
    return "\n".join(parts) + "\n"


def lora_params(cfg, targets, rng):
    """{(layer, target): (A, B)} random, fp32, in our order (layer, enum order)."""
    tc = tm.text_config(cfg)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    qd, kvd = tc.num_attention_heads * head_dim, tc.num_key_value_heads * head_dim
    shape = {"q_proj": (tc.hidden_size, qd), "k_proj": (tc.hidden_size, kvd), "v_proj": (tc.hidden_size, kvd),
             "o_proj": (qd, tc.hidden_size), "gate_proj": (tc.hidden_size, tc.intermediate_size),
             "up_proj": (tc.hidden_size, tc.intermediate_size),
             "down_proj": (tc.intermediate_size, tc.hidden_size)}
    out = {}
    for layer in range(tc.num_hidden_layers):
        for t in TARGETS:
            if t in targets:
                fan_in, fan_out = shape[t]
                a = rng.normal(0, fan_in ** -0.5, size=(RANK, fan_in)).astype(np.float32)
                b = rng.normal(0, 0.3 * RANK ** -0.5, size=(fan_out, RANK)).astype(np.float32)
                out[(layer, t)] = (a, b)
    return out


def flat(params):
    return np.concatenate([np.concatenate([a.ravel(), b.ravel()]) for a, b in params.values()])


def torch_reference(model, examples, params, targets, rslora, torch, peft):
    """(loss, {(layer, target): (gA, gB)}, d_embed [tokens × dim]) from PEFT
    + autograd, each example run alone."""
    import copy
    # a regular expression (PEFT full-matches it): the projections of the
    # decoder layers, not the vision tower's
    pattern = r"(?!.*vision).*\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(targets) + ")"
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=pattern,
                          use_rslora=rslora, bias="none")
    pm = peft.get_peft_model(copy.deepcopy(model), cfg)
    pm.eval()  # dropout 0 anyway; eval keeps transformers from any training-only path
    named = dict(pm.named_modules())
    mods = {}
    with torch.no_grad():
        for (layer, t), (a, b) in params.items():
            suffix = f".layers.{layer}.{MODULE[t]}.{t}"
            found = [m for n, m in named.items() if n.endswith(suffix) and "vision" not in n]
            assert len(found) == 1, (suffix, len(found))
            mod = found[0]
            mod.lora_A["default"].weight.copy_(torch.from_numpy(a))
            mod.lora_B["default"].weight.copy_(torch.from_numpy(b))
            mods[(layer, t)] = mod
    for name, p in pm.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
    n_lora = sum(1 for n, _ in pm.named_parameters() if "lora_" in n)
    assert n_lora == 2 * len(params), (n_lora, len(params))  # PEFT adapted exactly our pairs
    total = sum(sum(1 for x in lab[1:] if x >= 0) for _, lab in examples)
    loss = 0
    embeds = []
    emb = pm.get_input_embeddings()
    for ids, labels in examples:
        x = torch.tensor([ids])
        e = emb(x).detach().clone().requires_grad_(True)
        logits = pm(inputs_embeds=e, use_cache=False).logits[0].float()
        lab = torch.tensor(labels[1:])
        loss = loss + torch.nn.functional.cross_entropy(logits[:-1], lab, ignore_index=-100, reduction="sum")
        embeds.append(e)
    loss = loss / total
    loss.backward()
    grads = {k: (m.lora_A["default"].weight.grad.numpy().copy(), m.lora_B["default"].weight.grad.numpy().copy())
             for k, m in mods.items()}
    d_embed = np.concatenate([e.grad[0].numpy() for e in embeds])
    return float(loss.detach()), grads, d_embed


def run_ours(path, examples, params, targets, flags, tmp):
    """(loss sum, learned, grads flat, d_embed) from grad_driver, or None and why."""
    pfile = os.path.join(tmp, "params.f32")
    flat(params).astype("<f4").tofile(pfile)
    short = ",".join(t[: -len("_proj")] for t in targets)
    cmd = [DRIVER, "grad", path, "--threads", "2", "--targets", short, "--rank", str(RANK), "--alpha", str(ALPHA),
           "--params", pfile, *flags]
    p = subprocess.run(cmd, input=batch_text(examples).encode(), capture_output=True)
    if p.returncode != 0:
        return None, p.stderr.decode(errors="replace").strip()[:400]
    buf = p.stdout
    loss = np.frombuffer(buf, "<f8", 1, 0)[0]
    learned, n_params = np.frombuffer(buf, "<i8", 2, 8)
    grads = np.frombuffer(buf, "<f4", n_params, 24)
    off = 24 + 4 * n_params
    tokens, dim = np.frombuffer(buf, "<i8", 2, off)
    d_embed = np.frombuffer(buf, "<f4", tokens * dim, off + 16).reshape(tokens, dim)
    return (float(loss), int(learned), grads, d_embed), ""


def rel(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def compare(ours, ref, params):
    """(worst relative error over LoRA tensors, its tensor, d_embed's, loss's)."""
    loss_sum, learned, grads, d_embed = ours
    t_loss, t_grads, t_embed = ref
    worst, where, off = 0.0, "", 0
    for key, (a, b) in params.items():
        ga = grads[off: off + a.size].reshape(a.shape)
        off += a.size
        gb = grads[off: off + b.size].reshape(b.shape)
        off += b.size
        for name, g, t in (("A", ga, t_grads[key][0]), ("B", gb, t_grads[key][1])):
            e = rel(g, t)
            if not e <= worst:
                worst, where = e, f"layer {key[0]} {key[1]} {name}"
    e_embed = rel(d_embed, t_embed)
    e_loss = abs(loss_sum / learned - t_loss) / abs(t_loss)
    return worst, where, e_embed, e_loss, off == grads.size


def main():
    seed = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    if not os.access(DRIVER, os.X_OK):
        report(False, "grad_driver", f"{DRIVER} is not built (make build/ref/grad_driver)")
        return 1
    import peft
    import torch
    import transformers as tf
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    tmp = tempfile.mkdtemp(prefix="grad-torch-")
    t0 = time.time()
    try:
        import bitsandbytes.functional as bnb_f
        from test_model_hf import dequantized_copy
    except Exception as ex:  # noqa: BLE001 - any import failure is the reason to skip
        bnb_f, bnb_why = None, f"bitsandbytes does not import: {ex}"
    summary = []
    for i, (name, cls, cfg) in enumerate(tm.hf_families(tf)):
        model, path = tm.make(tmp, name, cls, cfg, seed + i, torch)
        vocab = tm.text_config(model.config).vocab_size
        examples = make_examples(rng, vocab)
        cases = []  # (case name, targets, flags, fmt, rslora)
        for pack in (0, 1):
            for ckpt in (0, 1):
                flags = (["--pack"] if pack else []) + (["--checkpoint"] if ckpt else [])
                cases.append((f"pack {pack} ckpt {ckpt}", TARGETS, flags, "f32", False))
        if name in ("llama-gqa-untied", "qwen3-qknorm", "gemma3-text"):
            cases.append(("targets q,v,down rslora pack 1", ("q_proj", "v_proj", "down_proj"),
                          ["--pack", "--rslora"], "f32", True))
            cases.append(("nf4 pack 1 ckpt 1", TARGETS, ["--pack", "--checkpoint", "--fmt", "nf4"], "nf4", False))
        refs = {}
        losses = {}
        for case, targets, flags, fmt, rslora in cases:
            full = f"grad {name} {case}"
            if fmt == "nf4" and bnb_f is None:
                say(f"skip - {full}: {bnb_why}")
                continue
            params = lora_params(model.config, targets, np.random.default_rng(seed * 7 + i))
            key = (targets, fmt, rslora)
            if key not in refs:
                ref_model = dequantized_copy(model, "nf4", torch, bnb_f) if fmt == "nf4" else model
                refs[key] = torch_reference(ref_model, examples, params, targets, rslora, torch, peft)
            ours, why = run_ours(path, examples, params, targets, flags, tmp)
            if ours is None:
                report(False, full, why)
                continue
            worst, where, e_embed, e_loss, sized = compare(ours, refs[key], params)
            ok = sized and worst < TOL and e_embed < TOL and e_loss < LOSS_TOL
            report(ok, full, f"seed {seed}: LoRA grads max rel err {worst:.3g} ({where}), d_embed {e_embed:.3g}, "
                             f"loss {e_loss:.3g}{'' if sized else ', wrong parameter count'} "
                             f"(tol {TOL}, loss {LOSS_TOL})")
            summary.append((name, case, worst, e_embed, e_loss))
            if fmt == "f32" and targets == TARGETS:
                losses[case] = ours[0]
        if any(k.startswith("pack 0") for k in losses) and any(k.startswith("pack 1") for k in losses):
            lo, hi = min(losses.values()), max(losses.values())
            e = (hi - lo) / abs(lo)
            report(e < 1e-6, f"packed loss = unpacked loss {name}",
                   f"seed {seed}: loss sums {losses} differ by {e:.3g} relative (tol 1e-6)")
        p = subprocess.run([DRIVER, "logits", path, "--threads", "2", "--targets", "all-linear", "--rank", "4"],
                           input=batch_text(examples).encode(), capture_output=True)
        if p.returncode != 0:
            report(False, f"train_logits = model_forward {name}", p.stderr.decode(errors="replace")[:400])
        else:
            import json
            r = json.loads(p.stdout)
            report(r["alone_rel"] <= 1e-6 and r["packed_rel"] < 1e-5, f"train_logits = model_forward {name}",
                   f"rel err alone {r['alone_rel']:.3g} (tol 1e-6), packed {r['packed_rel']:.3g} (tol 1e-5)")
            say(f"# {name}: train_logits vs model_forward rel err alone {r['alone_rel']:.2g}, "
                f"packed {r['packed_rel']:.2g}")
    for name, case, w, e, l in summary:
        say(f"# {name} {case}: LoRA {w:.2g}, d_embed {e:.2g}, loss {l:.2g}")
    say(f"# {time.time() - t0:.1f} s, seed {seed}")
    return 1 if tm.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
