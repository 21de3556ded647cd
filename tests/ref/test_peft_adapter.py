"""Our adapter folders (lib/adapter through tests/ref/lora_driver) against
Hugging Face PEFT 0.21, on the tiny random models of every family in
tinymodels.hf_families (Gemma 3 multimodal included).

ours -> PEFT: lora_driver writes an adapter with A and B both drawn from the
seed (B nonzero, so the adapter changes the logits): all seven projections
on every family, a subset (q, v, down, alpha not a whole number) on three,
rsLoRA on two. PeftModel.from_pretrained must load it with no warning about
missing or unexpected keys (DESIGN.md trap 6: PEFT only warns, and the
adapter is then silently a no-op), PEFT's own adapter state dict must hold
exactly our keys and shapes, PEFT's logits must equal ours (lora_driver
logits --adapter, model_forward with the adapter) within
    max |ours - PEFT| / max |PEFT| < 1e-4
and differ from the base model's by more than 1e-2 (same measure).

PEFT -> ours: get_peft_model with random nonzero A and B (all seven on every
family, a regular expression over the language model for Gemma 3
multimodal, whose vision tower also has q/k/v_proj), save_pretrained; our
logits with lora_load_peft's adapter must equal PEFT's (same tolerance).
The same folder with its tensors stored F16 and BF16 (one family each)
against PEFT loading those. lora_driver resave of PEFT's folder must write
adapter_model.safetensors byte for byte as PEFT wrote it, and the same
adapter_config.json up to target_modules' order (PEFT writes a set).

adapter_config.json: for the same settings ours and PEFT's must be the same
JSON (target_modules compared as a set), and byte-identical when one module
is targeted. An adapter PEFT made with target_modules as a list on the
multimodal Gemma 3 (vision tower adapted too) must be refused, naming a
vision key.
Seed: $LORAPIPE_SEED or the time, printed on failure.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import tinymodels as tm
from tinymodels import hf_logits, rel_err, report, say

DRIVER = os.path.join(tm.ROOT, "build", "ref", "lora_driver")
TOL = tm.TOL
DIFFER = 1e-2
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MM_REGEX = r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"


def run(args, data=b""):
    p = subprocess.run([DRIVER, *map(str, args)], input=data, capture_output=True)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace").strip()


def our_logits(folder, ids, vocab, adapter=None):
    args = ["logits", folder] + (["--adapter", adapter] if adapter else [])
    rc, out, errtext = run(args, " ".join(map(str, ids)).encode())
    if rc != 0:
        return None, errtext[:400]
    a = np.frombuffer(out, dtype="<f4")
    if a.size != len(ids) * vocab:
        return None, f"{a.size} values, expected {len(ids)} x {vocab}"
    return a.reshape(len(ids), vocab), ""


def peft_load(peft, base, folder):
    """PeftModel.from_pretrained on a copy of base: (model, key warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder)
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower()
           or "unexpected" in str(w.message).lower()]
    return pm.eval(), bad


def safetensors_keys(path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def ours_to_peft(torch, peft, name, model, folder, tmp, rng, label, args):
    case = f"ours->peft {name} {label}"
    adir = os.path.join(tmp, f"ours-{name}-{label}")
    rc, _, errtext = run(["save", folder, adir, "--seed", SEED, "--base", folder, *args])
    if rc != 0:
        report(False, case, f"lora_driver save: {errtext}")
        return
    try:
        pm, bad = peft_load(peft, model, adir)
    except Exception as ex:  # noqa: BLE001 - PEFT refusing our folder is the failure
        report(False, case, f"PeftModel.from_pretrained: {type(ex).__name__}: {ex}"[:500])
        return
    report(not bad, f"{case}: no missing/unexpected-key warning", f"PEFT warned: {bad}"[:500])
    theirs = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(pm).items()}
    ours = safetensors_keys(os.path.join(adir, "adapter_model.safetensors"))
    report(theirs == ours, f"{case}: PEFT's state dict has exactly our keys and shapes",
           f"only ours: {sorted(set(ours) - set(theirs))[:3]}, only PEFT's: {sorted(set(theirs) - set(ours))[:3]}, "
           f"shapes differ: {[k for k in ours if k in theirs and ours[k] != theirs[k]][:3]}")
    vocab = tm.text_config(model.config).vocab_size
    ids = rng.integers(0, vocab, size=11).tolist()
    mine, why = our_logits(folder, ids, vocab, adir)
    ref = hf_logits(pm, ids, torch)
    base = hf_logits(model, ids, torch)
    e = rel_err(mine, ref) if mine is not None else None
    report(e is not None and e < TOL, f"{case}: logits equal PEFT's",
           why or f"seed {SEED}: max|ours-peft|/max|peft| = {e:.3g} (tol {TOL})")
    d = rel_err(ref, base)
    report(d > DIFFER, f"{case}: the adapter changes the logits", f"PEFT's logits differ from the base by {d:.3g}")
    if e is not None and e < TOL:
        say(f"# {case}: rel err {e:.2g}, change from base {d:.2g}")


def named_copy(model, folder):
    """A copy of model that says it was loaded from folder, as from_pretrained
    would (get_peft_model takes base_model_name_or_path from it)."""
    m = copy.deepcopy(model)
    m.name_or_path = folder
    m.config._name_or_path = folder
    return m


def randomize_lora(torch, pm, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 0.4)


def peft_to_ours(torch, peft, name, model, folder, tmp, rng, dtypes):
    case = f"peft->ours {name}"
    multimodal = name == "gemma3-multimodal"
    lc = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                         target_modules=MM_REGEX if multimodal else ALL7, base_model_name_or_path=folder)
    pm = peft.get_peft_model(named_copy(model, folder), lc)
    randomize_lora(torch, pm, SEED)
    pm.eval()
    pdir = os.path.join(tmp, f"peft-{name}")
    pm.save_pretrained(pdir)
    vocab = tm.text_config(model.config).vocab_size
    ids = rng.integers(0, vocab, size=11).tolist()
    mine, why = our_logits(folder, ids, vocab, pdir)
    ref = hf_logits(pm, ids, torch)
    e = rel_err(mine, ref) if mine is not None else None
    report(e is not None and e < TOL, f"{case}: logits equal PEFT's",
           why or f"seed {SEED}: max|ours-peft|/max|peft| = {e:.3g} (tol {TOL})")
    if e is not None and e < TOL:
        say(f"# {case}: rel err {e:.2g}, change from base {rel_err(ref, hf_logits(model, ids, torch)):.2g}")

    # our rewrite of PEFT's folder
    rdir = os.path.join(tmp, f"resaved-{name}")
    rc, _, errtext = run(["resave", folder, pdir, rdir])
    if rc != 0:
        report(False, f"{case}: resaved as PEFT saved it", errtext)
    else:
        with open(os.path.join(pdir, "adapter_model.safetensors"), "rb") as f:
            theirs = f.read()
        with open(os.path.join(rdir, "adapter_model.safetensors"), "rb") as f:
            ours = f.read()
        report(ours == theirs, f"{case}: adapter_model.safetensors resaved byte for byte",
               f"{len(ours)} bytes vs PEFT's {len(theirs)}")
        cfg_ok, why = same_config(os.path.join(rdir, "adapter_config.json"), os.path.join(pdir, "adapter_config.json"))
        report(cfg_ok, f"{case}: adapter_config.json resaved as PEFT wrote it", why)

    # the same tensors stored in 16 bits
    from safetensors.torch import load_file, save_file
    for dt in dtypes:
        sub = f"{case} {dt}"
        hdir = os.path.join(tmp, f"peft-{name}-{dt}")
        os.makedirs(hdir)
        sd = load_file(os.path.join(pdir, "adapter_model.safetensors"))
        tdt = torch.float16 if dt == "F16" else torch.bfloat16
        save_file({k: v.to(tdt) for k, v in sd.items()}, os.path.join(hdir, "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(pdir, "adapter_config.json")) as f, \
                open(os.path.join(hdir, "adapter_config.json"), "w") as g:
            g.write(f.read())
        hpm, bad = peft_load(peft, model, hdir)
        mine, why = our_logits(folder, ids, vocab, hdir)
        ref = hf_logits(hpm, ids, torch)
        e = rel_err(mine, ref) if mine is not None else None
        report(e is not None and e < TOL and not bad, f"{sub}: logits equal PEFT's",
               why or f"seed {SEED}: rel err {e:.3g} (tol {TOL}); PEFT warnings {bad}")


def same_config(ours_path, peft_path):
    """Whether two adapter_config.json files are the same JSON, target_modules
    compared as a set: (bool, why)."""
    with open(ours_path) as f:
        ours = json.load(f)
    with open(peft_path) as f:
        theirs = json.load(f)
    for d in (ours, theirs):
        if isinstance(d.get("target_modules"), list):
            d["target_modules"] = sorted(d["target_modules"])
    if ours == theirs:
        return True, ""
    keys = sorted(set(ours) | set(theirs))
    diff = {k: (ours.get(k, "<absent>"), theirs.get(k, "<absent>")) for k in keys if ours.get(k) != theirs.get(k)}
    return False, f"differs (ours, PEFT's): {diff}"[:600]


def test_configs(torch, peft, model, folder, tmp):
    settings = [  # lora_driver args, LoraConfig kwargs, byte-compare
        (["--rank", 4, "--alpha", 8, "--targets", "q"], dict(r=4, lora_alpha=8, target_modules=["q_proj"]), True),
        (["--rank", 16, "--alpha", 32, "--dropout", 0.05, "--targets", "all-linear", "--rslora"],
         dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=ALL7, use_rslora=True), False),
        (["--rank", 3, "--alpha", 5.5, "--dropout", 0.1, "--targets", "v,down"],
         dict(r=3, lora_alpha=5.5, lora_dropout=0.1, target_modules=["v_proj", "down_proj"]), False),
    ]
    for k, (args, kw, exact) in enumerate(settings):
        case = f"adapter_config.json {' '.join(map(str, args))}"
        odir, pdir = os.path.join(tmp, f"cfg-ours-{k}"), os.path.join(tmp, f"cfg-peft-{k}")
        rc, _, errtext = run(["save", folder, odir, "--base", folder, *args])
        if rc != 0:
            report(False, case, errtext)
            continue
        pm = peft.get_peft_model(named_copy(model, folder), peft.LoraConfig(task_type="CAUSAL_LM",
                                                                         base_model_name_or_path=folder, **kw))
        pm.save_pretrained(pdir)
        ok, why = same_config(os.path.join(odir, "adapter_config.json"), os.path.join(pdir, "adapter_config.json"))
        report(ok, f"{case}: same JSON as PEFT's", why)
        if exact:
            with open(os.path.join(odir, "adapter_config.json"), "rb") as f:
                a = f.read()
            with open(os.path.join(pdir, "adapter_config.json"), "rb") as f:
                b = f.read()
            report(a == b, f"{case}: byte for byte as PEFT writes it",
                   f"first difference at byte {next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))}")


def test_mm_list_refused(torch, peft, model, folder, tmp):
    case = "peft->ours gemma3-multimodal, target_modules a list (vision tower adapted too): refused"
    lc = peft.LoraConfig(r=2, lora_alpha=4, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    pm = peft.get_peft_model(copy.deepcopy(model), lc)
    randomize_lora(torch, pm, SEED)
    pdir = os.path.join(tmp, "peft-mm-list")
    pm.save_pretrained(pdir)
    has_vision = any("vision" in k for k in safetensors_keys(os.path.join(pdir, "adapter_model.safetensors")))
    _, why = our_logits(folder, [1, 2, 3], tm.text_config(model.config).vocab_size, pdir)
    report(has_vision and "unexpected key" in why and "vision" in why, case,
           f"PEFT adapted the vision tower: {has_vision}; our error: {why or '(none: loaded)'}")


def main():
    global SEED
    SEED = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    if not os.access(DRIVER, os.X_OK):
        report(False, "lora_driver", f"{DRIVER} is not built (make build/ref/lora_driver)")
        return 1
    import peft
    import torch
    import transformers as tf
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="peft-adapter-") as tmp:
        models = {}
        for i, (name, cls, cfg) in enumerate(tm.hf_families(tf)):
            models[name] = tm.make(tmp, name, cls, cfg, SEED + i, torch)
        for name, (model, folder) in models.items():
            ours_to_peft(torch, peft, name, model, folder, tmp, rng, "all7", ["--rank", 4, "--alpha", 8,
                                                                             "--targets", "all-linear"])
            if name in ("llama-gqa-untied", "qwen2-bias", "gemma3-multimodal"):
                ours_to_peft(torch, peft, name, model, folder, tmp, rng, "q,v,down",
                             ["--rank", 3, "--alpha", 5.5, "--targets", "q,v,down"])
            if name in ("llama-tied-llama3", "qwen3-qknorm"):
                ours_to_peft(torch, peft, name, model, folder, tmp, rng, "rslora",
                             ["--rank", 8, "--alpha", 4, "--targets", "q,k,o,up", "--rslora"])
            dtypes = {"llama-gqa-untied": ["F16"], "gemma3-text": ["BF16"]}.get(name, [])
            peft_to_ours(torch, peft, name, model, folder, tmp, rng, dtypes)
        test_configs(torch, peft, *models["llama-gqa-untied"], tmp)
        test_mm_list_refused(torch, peft, *models["gemma3-multimodal"], tmp)
    say(f"# {time.time() - t0:.1f} s, seed {SEED}")
    return 1 if tm.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
