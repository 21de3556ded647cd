#!/usr/bin/env python3
"""test_tokenizer_hf.py: lib/tokenizer against Hugging Face `tokenizers`.

For every fixture tokenizer (LORAPIPE_TOKENIZER_FIXTURES, default
/work/shared/fixtures/tokenizers/*/tokenizer.json.zst, decompressed into a
temporary folder) and every record of tests/ref/corpus/ (text.jsonl, and
invalid.jsonl whose bytes HF sees as bytes.decode("utf-8", "replace")):
  - ids and byte offsets equal HF's, with add_special_tokens False and True
    (HF's Python offsets count characters; they are mapped to the bytes of the
    record, a U+FFFD standing for the invalid bytes it replaced);
  - our decode of those ids equals HF's decode (so decode(encode(x)) == x
    wherever HF round-trips), and how many records round-trip is reported;
  - decode of random id sequences (specials, byte tokens, unknown ids) equals
    HF's, with and without skip_special_tokens;
  - the vocabulary size and the BOS id agree with HF's view.
Our side runs through build/ref/tokenizer_driver, one process per tokenizer.
Prints one "ok - ..." / "not ok - ..." line per tokenizer per check.
"""
import codecs
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "tokenizer_driver")
CORPUS = os.path.join(ROOT, "tests", "ref", "corpus")
FIXTURES = os.environ.get("LORAPIPE_TOKENIZER_FIXTURES", "/work/shared/fixtures/tokenizers")
SHOW = 3


def load_corpus():
    recs = []  # (raw bytes, str as HF sees it, per-char byte ranges)
    with open(os.path.join(CORPUS, "text.jsonl"), encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            recs.append(t.encode("utf-8"))
    with open(os.path.join(CORPUS, "invalid.jsonl"), encoding="ascii") as f:
        for line in f:
            recs.append(bytes.fromhex(json.loads(line)["hex"]))
    out = []
    for b in recs:
        s, spans = decode_replace(b)
        out.append((b, s, spans))
    return out


def decode_replace(b):
    """bytes.decode('utf-8', 'replace'), with the byte range of every char."""
    errs = []

    def handler(e):
        errs.append((e.start, e.end))
        return ("\ufffd", e.end)

    codecs.register_error("lorapipe_spans", handler)
    s = b.decode("utf-8", "lorapipe_spans")
    spans = []
    pos = 0
    ei = 0
    for ch in s:
        if ei < len(errs) and errs[ei][0] == pos and ch == "\ufffd":
            spans.append(errs[ei])
            pos = errs[ei][1]
            ei += 1
        else:
            n = len(ch.encode("utf-8"))
            spans.append((pos, pos + n))
            pos += n
    return s, spans


def byte_offsets(offsets, spans, total):
    res = []
    for a, b in offsets:
        if b > a:
            res.append([spans[a][0], spans[b - 1][1]])
        else:
            p = spans[a][0] if a < len(spans) else total
            res.append([p, p])
    return res


def run_driver(path, requests):
    inp = "".join(json.dumps(r) + "\n" for r in requests)
    p = subprocess.run([DRIVER, path], input=inp, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"driver failed ({p.returncode}): {p.stderr.strip()}")
    return [json.loads(l) for l in p.stdout.splitlines()]


def short(x, n=160):
    r = repr(x)
    return r if len(r) <= n else r[:n] + "..."


def report(name, fails, total, extra=""):
    if fails:
        print(f"not ok - {name}: {len(fails)} of {total} differ{extra}")
        for f in fails[:SHOW]:
            print("    " + f)
    else:
        print(f"ok - {name}: {total} cases{extra}")
    sys.stdout.flush()


ONLY = os.environ.get("LORAPIPE_TOK_ONLY", "")  # run only the tokenizers whose name holds this


def check_tokenizer(name, path, corpus, Tokenizer):
    if ONLY and ONLY not in name:
        return
    hf = Tokenizer.from_file(path)
    ours = run_driver(path, [{"info": 1}])[0]

    # vocabulary size (largest id + 1) and BOS
    vocab = hf.get_vocab(with_added_tokens=True)
    want_size = max(vocab.values()) + 1
    bos_ok = True
    post = json.load(open(path, encoding="utf-8")).get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    want_bos = -1
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            for piece in p["single"]:
                if "Sequence" in piece:
                    break
                want_bos = p["special_tokens"][piece["SpecialToken"]["id"]]["ids"][0]
                break
    if want_bos >= 0:
        bos_ok = ours["bos"] == want_bos
    if ours["vocab_size"] == want_size and bos_ok:
        print(f"ok - {name} info: vocab_size {want_size}, bos {ours['bos']}, load {ours['load_s']}s")
    else:
        print(f"not ok - {name} info: vocab_size ours {ours['vocab_size']} hf {want_size}; bos ours {ours['bos']} template {want_bos}")

    for special in (0, 1):
        reqs = [{"encode": b.hex(), "special": special} for b, _, _ in corpus]
        got = run_driver(path, reqs)
        fails = []
        for (b, s, spans), r in zip(corpus, got):
            e = hf.encode(s, add_special_tokens=bool(special))
            want_off = byte_offsets(e.offsets, spans, len(b))
            if "error" in r:
                fails.append(f"text {short(b)}: our error {r['error']}")
            elif r["ids"] != e.ids:
                i = next((k for k, (x, y) in enumerate(zip(r["ids"], e.ids)) if x != y), min(len(r["ids"]), len(e.ids)))
                fails.append(f"text {short(b)}: ids differ at {i}: ours {r['ids'][max(0, i - 3):i + 5]} hf {e.ids[max(0, i - 3):i + 5]}")
            elif r["offsets"] != want_off:
                i = next(k for k, (x, y) in enumerate(zip(r["offsets"], want_off)) if x != y)
                fails.append(f"text {short(b)}: offsets differ at token {i} (id {e.ids[i]}): ours {r['offsets'][i]} hf {want_off[i]}")
        report(f"{name} encode add_special={bool(special)} ids+offsets", fails, len(corpus))

    # decode of what was encoded: equal to HF's decode; count round trips
    reqs = []
    hf_ids = []
    for b, s, _ in corpus:
        ids = hf.encode(s, add_special_tokens=False).ids
        hf_ids.append(ids)
        reqs.append({"decode": ids, "skip": 0})
    got = run_driver(path, reqs)
    fails = []
    hf_round = ours_round = 0
    for (b, s, _), ids, r in zip(corpus, hf_ids, got):
        want = hf.decode(ids, skip_special_tokens=False)
        mine = bytes.fromhex(r.get("text", "")).decode("utf-8", "replace")
        if want == s:
            hf_round += 1
            if mine == s:
                ours_round += 1
        if "error" in r or mine != want:
            fails.append(f"ids {short(ids, 100)}: ours {short(mine)} hf {short(want)}")
    report(f"{name} decode(encode(x)) == HF decode", fails, len(corpus),
           f"; round trips: HF {hf_round}, ours {ours_round} of {len(corpus)}")

    # random id sequences
    rng = random.Random(hash(name) & 0xffff)
    size = want_size
    specials = [i for t, i in vocab.items() if t.startswith("<") and t.endswith(">")][:400]
    cases = []
    for _ in range(400):
        seq = []
        for _ in range(rng.randrange(1, 25)):
            k = rng.random()
            if k < 0.6:
                seq.append(rng.randrange(size))
            elif k < 0.85 and specials:
                seq.append(rng.choice(specials))
            elif k < 0.95:
                seq.append(rng.randrange(min(size, 600)))
            else:
                seq.append(size + rng.randrange(5))
        cases.append(seq)
    for skip in (0, 1):
        got = run_driver(path, [{"decode": c, "skip": skip} for c in cases])
        fails = []
        for c, r in zip(cases, got):
            want = hf.decode(c, skip_special_tokens=bool(skip))
            mine = bytes.fromhex(r.get("text", "")).decode("utf-8", "surrogateescape")
            if "error" in r or mine != want:
                fails.append(f"ids {c}: ours {short(mine)} hf {short(want)}")
        report(f"{name} decode random ids skip_special={bool(skip)}", fails, len(cases))


LLAMA_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def bytelevel_pre(add_prefix_space=False, use_regex=False):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def variants(base):
    """Tokenizers the fixtures do not use, built from their vocabularies with other
    normalizers, pre-tokenizers, post-processors, decoders and added-token flags,
    so that every supported component meets HF too."""
    out = []
    if "llama3" in base:
        j = base["llama3"]
        for beh in ("Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
            for inv in (False, True):
                out.append((f"llama3+split-{beh}-invert={inv}", j, {
                    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": LLAMA_RE}, "behavior": beh, "invert": inv},
                        bytelevel_pre()]}}))
        out.append(("llama3+bytelevel-regex-prefix+trim+nfkc+lowercase", j, {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
            "pre_tokenizer": bytelevel_pre(True, True),
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}}))
        out.append(("llama3+digits+prepend+nfd+punct", j, {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Prepend", "prepend": " "}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, {"type": "Punctuation", "behavior": "Isolated"},
                {"type": "Split", "pattern": {"String": "  "}, "behavior": "MergedWithNext", "invert": False},
                bytelevel_pre(True, False)]}}))
        out.append(("llama3+whitespace+nfkd+strip", j, {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Strip", "strip_left": True, "strip_right": True}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, bytelevel_pre()]}}))
        out.append(("llama3+wssplit+digits-contiguous+replace-regex", j, {
            "normalizer": {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "<n>"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"},
                              {"type": "Digits", "individual_digits": False}, bytelevel_pre()]}}))
    if "qwen2_5" in base:
        j = base["qwen2_5"]
        added = [dict(t) for t in j["added_tokens"]]
        for t in added:
            if t["content"] == "<|im_end|>":
                t.update(lstrip=True, rstrip=True)
            if t["content"] == "<|im_start|>":
                t.update(rstrip=True)
            if t["content"] in ("<tool_call>", "</tool_call>"):
                t.update(single_word=True)
            if t["content"] in ("<|fim_prefix|>", "<|file_sep|>"):
                t.update(normalized=True, special=False)
        out.append(("qwen2_5+added-flags+lowercase", j, {
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}}))
    if "gemma3" in base:
        j = base["gemma3"]
        for scheme, split in (("first", True), ("always", False), ("never", True)):
            out.append((f"gemma3+metaspace-{scheme}-split={split}", j, {
                "normalizer": None,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split},
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]}}))
        out.append(("gemma3+prepend+replace+strip-decoder", j, {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}))
    return out


def main():
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        print(f"skip - tokenizer hf: the tokenizers package is missing ({e})")
        return 0
    if not os.path.exists(DRIVER):
        print(f"not ok - tokenizer hf: {DRIVER} is missing (make builds it)")
        return 1
    fixtures = sorted(glob.glob(os.path.join(FIXTURES, "*", "tokenizer.json.zst")) +
                      glob.glob(os.path.join(FIXTURES, "*", "tokenizer.json")))
    if not fixtures:
        print(f"skip - tokenizer hf: no fixtures under {FIXTURES}")
        return 0
    if any(f.endswith(".zst") for f in fixtures) and not shutil.which("zstd"):
        print("skip - tokenizer hf: the zstd program is needed to unpack the fixtures")
        return 0
    corpus = load_corpus()
    tmp = tempfile.mkdtemp(prefix="lorapipe-tok-")
    base = {}
    try:
        done = set()
        for f in fixtures:
            name = os.path.basename(os.path.dirname(f))
            if name in done:
                continue
            done.add(name)
            d = os.path.join(tmp, name)
            os.makedirs(d)
            path = os.path.join(d, "tokenizer.json")
            if f.endswith(".zst"):
                subprocess.run(["zstd", "-q", "-d", f, "-o", path], check=True)
            else:
                shutil.copy(f, path)
            cfg = os.path.join(os.path.dirname(f), "tokenizer_config.json")
            if os.path.exists(cfg):
                shutil.copy(cfg, d)
            try:
                check_tokenizer(name, path, corpus, Tokenizer)
            except Exception as e:  # a crash of one tokenizer's check is its failure, the others go on
                print(f"not ok - {name}: {type(e).__name__}: {e}")
            base[name] = path
        # the variants, on every fourth record
        loaded = {}
        for name, path in base.items():
            if name in ("llama3", "qwen2_5", "gemma3"):
                loaded[name] = json.load(open(path, encoding="utf-8"))
        sub = corpus[::4]
        for vname, j, changes in variants(loaded):
            v = dict(j)
            v.update(changes)
            d = os.path.join(tmp, "variant")
            os.makedirs(d, exist_ok=True)
            vpath = os.path.join(d, "tokenizer.json")
            with open(vpath, "w", encoding="utf-8") as f:
                json.dump(v, f, ensure_ascii=False)
            try:
                check_tokenizer(vname, vpath, sub, Tokenizer)
            except Exception as e:
                print(f"not ok - {vname}: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
