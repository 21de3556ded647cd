"""ds-fmt's memo of shapes (lib/chat_memo.h) against rendering every record.

A record of a shape ds-fmt has seen (the same messages but for their contents' text)
is written from what the first one of the shape taught it, without rendering. The
output must be the very bytes rendering gives. For every template of
tests/ref/templates/manifest.json, the conversations of make_conversations that ds-fmt
accepts are each written VARIANTS times with every string content replaced by a random
text: words, Russian, CJK and emoji, quotes, backslashes, tabs, newlines and control
characters, the templates' own markers (<|im_end|>, <think>...</think>,
<tool_response> ...), JSON, and leading or trailing white space, ASCII and Unicode
(U+00A0, U+3000, U+2028), sometimes all white space or empty, sometimes "x" (which the
templates below compare with). ds-fmt formats the file with its memo and again with
--no-memo, one thread each, in four modes (default, --add-generation-prompt,
--train-turns last, --system TEXT) with --skip-bad: standard output, standard error
and the exit status must be the same bytes. A case per template and mode; where the
template lets the memo work (it refuses a shape whose rendering looked into a content:
Qwen3 and DeepSeek V3 split at </think>), a case also checks that records were
written from the memo, else the comparison would prove nothing. The texts are drawn
afresh each run; the seed is printed first, and DSFMT_MEMO_SEED replays it.

Then templates that look into the contents in each way the memo must refuse (a
comparison, `in`, length, slicing, a method, a filter, tojson of more than a content, a loop over a content,
a namespace, a list of contents, printing a message, a trim of more than a content, a
content as a dict key, selectattr by content) and the ways it allows (trim, strip(), tojson,
truth, type tests, get(), default, macros, selectattr by role, two messages compared
that differ elsewhere), each a ChatML loop with Qwen2.5's tokens: the same comparison,
and the check that the memo wrote records for the allowed ones and none for the others.

Then the line memo, which writes a line that is a learned line but for its contents and
top-level strings and numbers without parsing it: with qwen2_5, llama3_2, gemma3 and
mistral_v0_3, lines in groups of one skeleton (their contents and ids varied), written
with json.dumps' escapes or UTF-8, compact or spaced, keys reversed, with extra members
of every kind (strings with escapes and \u0000, negative, float and 20-digit numbers,
objects, arrays, true, null, the output's own keys, a tool list jq must read) and made
unusual or broken in one way (a key twice, an escaped key the parser reads as
"content" or "messages", escapes the parser leaves to jq, bytes that are not UTF-8, a
control byte, DEL, trailing bytes, a truncated line): the same comparison, and the check
that lines were written without being parsed.
"""
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsfmt_common as C  # noqa: E402
from make_conversations import conversations  # noqa: E402

VARIANTS = int(os.environ.get("DSFMT_MEMO_VARIANTS", "6"))
MODES = {
    "default": [],
    "genprompt": ["--add-generation-prompt"],
    "last": ["--train-turns", "last"],
    "system": ["--system", "  You are terse.\n"],
}
# where the memo may write no record (its records still compared): templates that look
# into the contents (Qwen3 and DeepSeek V3 split at </think>), and --system with Phi-4
# mini, whose prefix renderings (it reads add_generation_prompt) are not the whole
# rendering's beginning. Mistral's templates move the system prompt into the last user
# message too, but never read the flag: their shapes are replayed. SmolLM3 prints
# content.lstrip("\n") and Granite 4 copies each content into a namespace; LFM2 and
# DeepSeek V3.1 build the system prompt in a namespace (so only --system, which makes
# every record have one, leaves no shape to replay). MiniMax M2 splits at </think>,
# Qwen3.5 passes each content through a macro, Gemma 4 through strip_thinking;
# Nemotron 3 looks for <think> in the content, MiniCPM5 and Step 3.5 for </think>,
# Granite 4.1 copies it into a namespace as Granite 4 does; DeepSeek V4 builds the
# system prompt in a namespace.
LOOKS = {"qwen3", "deepseek_v3", ("phi4_mini", "system"), "smollm3", "granite4", ("lfm2", "system"),
         ("deepseek_v3_1", "system"), "minimax_m2", "qwen3_5", "gemma4", "nemotron3_nano", "minicpm5",
         "stepfun3_5", "granite4_1", ("deepseek_v4", "system")}


def run(cmd, path):
    p = subprocess.run(cmd + ["--skip-bad", "--threads", "1", path], capture_output=True)
    return p.returncode, p.stdout, p.stderr


def memo_stats(cmd, path):
    """(replayed, learned, refused) from --progress's last line."""
    p = subprocess.run(cmd + ["--skip-bad", "--threads", "1", "--progress", "-o", os.devnull, path],
                       capture_output=True)
    m = re.search(rb"(\d+) records written from (\d+) shapes learned; (\d+) shapes rendered every time; "
                  rb"(\d+) lines not parsed", p.stderr)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)


def compare(name, cmd, path, want_replays, want_unparsed=None):
    a = run(cmd, path)
    b = run(cmd + ["--no-memo"], path)
    if a != b:
        why = "exit status" if a[0] != b[0] else "stdout" if a[1] != b[1] else "stderr"
        if why == "stdout":
            la, lb = a[1].split(b"\n"), b[1].split(b"\n")
            k = next((i for i in range(min(len(la), len(lb))) if la[i] != lb[i]), min(len(la), len(lb)))
            why += f" at line {k + 1}: {la[k][:300] if k < len(la) else b''!r} vs {lb[k][:300] if k < len(lb) else b''!r}"
        print(f"not ok - {name}: memo and --no-memo differ ({why})")
        return False
    replayed, learned, refused, unparsed = memo_stats(cmd, path)
    if want_unparsed and unparsed == 0:
        print(f"not ok - {name}: the line memo wrote no record ({replayed} from the memo)")
        return False
    if want_replays is True and replayed == 0:
        print(f"not ok - {name}: the memo wrote no record ({learned} shapes learned, {refused} refused)")
        return False
    if want_replays is False and replayed:
        print(f"not ok - {name}: the memo wrote {replayed} records of a template it must refuse")
        return False
    print(f"ok - {name} ({len(a[1].splitlines())} lines; {replayed} from the memo, {unparsed} of them not parsed, "
          f"{learned} shapes learned, {refused} refused)")
    return True


# ChatML loops with one use of the content each: (name, how the turn prints, memo may replay)
CHATML = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n" "{BODY}" "<|im_end|>\n{%- endfor %}"
          "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
ADVERSARIAL = [
    ("compare", "{% if m.content == 'x' %}X{% endif %}{{ m.content }}", False),
    ("compare-not", "{% if m.content != 'x' %}{{ m.content }}{% else %}X{% endif %}", False),
    ("in", "{% if '<think>' in m.content %}T{% endif %}{{ m.content }}", False),
    ("length", "{{ m.content | length }}:{{ m.content }}", False),
    ("length-test", "{% if m.content | length > 6 %}L{% endif %}{{ m.content }}", False),
    ("slice", "{{ m.content[:3] }}|{{ m.content }}", False),
    ("index", "{{ m.content[0] }}{{ m.content }}", False),
    ("method", "{{ m.content.split('</think>')[-1] }}", False),
    ("startswith", "{% if m.content.startswith('<') %}<{% endif %}{{ m.content }}", False),
    ("upper", "{{ m.content | upper }}", False),
    ("replace", "{{ m.content | replace('x', 'y') }}", False),
    ("tojson", "{{ m.content | tojson }}", True),
    ("tojson-concat", "{{ (m.content ~ '.') | tojson }}", False),
    ("tojson-indent", "{{ m.content | tojson(indent=2) }}", False),
    ("lstrip", "{{ m.content.lstrip() }}", False),
    ("trim-concat", "{{ (m.content + '\n') | trim }}", False),
    ("loop-chars", "{% for c in m.content %}{{ c }}{% endfor %}", False),
    ("namespace", "{% set ns = namespace(c=m.content) %}{{ ns.c }}", False),
    ("namespace-set", "{% set ns = namespace(c='') %}{% set ns.c = m.content %}{{ ns.c }}", False),
    ("list", "{{ [m.content, 'z'] | join('') }}", False),
    ("print-message", "{{ m }}{{ m.content }}", False),
    ("messages-json", "{% if loop.first %}{{ messages | tojson }}{% endif %}{{ m.content }}", False),
    ("dict-key", "{{ {'x': 'X'}.get(m.content, '') }}{{ m.content }}", False),
    ("times", "{{ m.content * 2 }}", False),
    ("format", "{{ '%s!' % m.content }}", False),
    ("is-lower", "{% if m.content is lower %}l{% endif %}{{ m.content }}", False),
    ("select", "{{ messages | selectattr('content', 'equalto', 'x') | list | length }}{{ m.content }}", False),
    ("set-block-filter", "{% set t | upper %}{{ m.content }}{% endset %}{{ t }}", False),
    ("filter-block", "{% filter trim %} {{ m.content }} {% endfilter %}", False),
    ("message-eq", "{% if m == messages[0] %}F{% endif %}{{ m.content }}", True),
    ("trim", "{{ m.content | trim }}", True),
    ("strip", "{{ m.content.strip() }}", True),
    ("truth", "{% if m.content %}{{ m.content }}{% else %}-{% endif %}", True),
    ("truth-trim", "{% if m.content | trim %}{{ m.content | trim }}{% else %}-{% endif %}", True),
    ("type-test", "{% if m.content is string %}{{ m.content }}{% endif %}", True),
    ("get", "{{ m.get('content') }}", True),
    ("default", "{{ m.content | default('none') }}", True),
    ("macro", "{% macro say(t) %}[{{ t | trim }}]{% endmacro %}{{ say(m.content) }}", True),
    ("concat", "{{ '>' + m.content + '<' }}{{ m.content ~ '.' }}", True),
    ("set", "{% set c = m.content %}{{ c }}", True),
    ("and-or", "{{ m.content and m.content or '-' }}", True),
    ("key-in", "{% if 'content' in m %}{{ m['content'] }}{% endif %}", True),
    ("selectattr-role", "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}{{ m.content }}", True),
]


# The line memo: lines of one skeleton but for their contents (and top-level strings
# and numbers) are written without being parsed. Each group below is LINE_REPEATS lines
# of one serialization, extra members and mutation, their contents and ids varied.
LINE_REPEATS = 4
STYLES = {
    "ascii": dict(),  # json.dumps' default: \uXXXX escapes, surrogate pairs for emoji
    "utf8": dict(ensure_ascii=False),
    "compact": dict(ensure_ascii=False, separators=(",", ":")),
    "spaced": dict(ensure_ascii=False, separators=(" , ", " : ")),
}
EXTRAS = [
    {}, {"source": "bank"}, {"n": -5}, {"score": 1.5}, {"score": 1e3}, {"big": 12345678901234567890},
    {"note": 'say "hi"\n\t/'}, {"note": "nul\u0000here"}, {"meta": {"a": [1, 2.0]}}, {"tags": ["x"]},
    {"ok": True}, {"none": None}, {"text": "in"}, {"train": [[0, 1]]}, {"expected": "e"}, {"system": "ignored"},
    {"tools": None}, {"tools": "nope"},
    # a line jq reads (a \u0000 in its tool list) has no float marks: its score is 2, not 2.0
    {"score": 2.0, "tools": [{"type": "function", "function": {"name": "f", "description": "nul\u0000"}}]},
]


# Lines made unusual, or broken, each in one way.
TWO = b'[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
STRING = rb'"content": "((?:[^"\\]|\\.)*)"'
MUTATIONS = {
    None: lambda x: x,
    "dup-top": lambda x: x[:-1] + b', "id": 7}',
    "dup-messages": lambda x: x[:-1] + b', "messages": ' + TWO + b"}",
    "dup-content": lambda x: x.replace(b'"content":', b'"content": "dup", "content":', 1),
    "escaped-key": lambda x: x.replace(b'"content"', b'"cont\\u0065nt"', 1),
    # the escaped key is the parser's "content", and the last one
    "escaped-dup": lambda x: re.sub(STRING, lambda m: m.group(0) + b', "cont\\u0065nt": "fixed"', x, count=1),
    "escaped-dup-messages": lambda x: x[:-1] + b', "m\\u0065ssages": ' + TWO + b"}",
    "escaped-messages": lambda x: x.replace(b'"messages"', b'"m\\u0065ssages"', 1),
    "slash": lambda x: x.replace(b'"content": "', b'"content": "\\/a\\b\\f', 1),
    "lone-surrogate": lambda x: x.replace(b'"content": "', b'"content": "\\ud800', 1),
    "nul-escape": lambda x: x.replace(b'"content": "', b'"content": "\\u0000', 1),
    "bad-utf8": lambda x: x.replace(b'"content": "', b'"content": "\xff', 1),
    "raw-control": lambda x: x.replace(b'"content": "', b'"content": "\x01', 1),
    "del": lambda x: x.replace(b'"content": "', b'"content": "\x7f', 1),
    "trailing": lambda x: x + b" x",
    "truncated": lambda x: x[:-1],
    "content-number": lambda x: x.replace(b'"content": "', b'"content": 5, "c": "', 1),
}


def line_records(base, rng):
    """Lines of base's conversations in groups of one skeleton."""
    out = []
    for r in base:
        for _ in range(3):
            style = rng.choice(list(STYLES))
            extra = rng.choice(EXTRAS)
            what = rng.choice(list(MUTATIONS)) if rng.random() < 0.4 else None
            order = rng.random() < 0.3
            for k in range(LINE_REPEATS):
                rec = dict(C.vary_contents(r, rng) if k else r, id=rng.randint(0, 10 ** 6), **extra)
                if order:
                    rec = dict(reversed(list(rec.items())))
                sep = dict(STYLES[style])
                if "compact" not in style and "spaced" not in style:
                    sep.setdefault("separators", (", ", ": "))
                out.append(MUTATIONS[what if style != "compact" else None](json.dumps(rec, **sep).encode()))
    return out


def main():
    # fresh texts each run: DSFMT_MEMO_SEED (or LORAPIPE_SEED) replays a run
    seed = int(os.environ.get("DSFMT_MEMO_SEED", os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000)))
    print(f"# seed {seed} (DSFMT_MEMO_SEED={seed} replays it)", flush=True)
    rng = random.Random(seed)
    ok = True
    tmp = tempfile.mkdtemp(prefix="test-dsfmt-memo-")
    qwen = None
    for entry in C.manifest():
        t = C.Template(entry, tmp)
        if t.skip:
            print(f"skip - memo {t.name}: {t.skip}")
            continue
        if t.name == "qwen2_5":
            qwen = t
        base = [r for r in conversations(t.features) if t.render(r["messages"], r.get("tools"))[0] == "ok"]
        recs = []
        for r in base:
            recs.append(r)
            recs.extend(C.vary_contents(r, rng) for _ in range(VARIANTS))
        path = os.path.join(tmp, t.name + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i, r in enumerate(recs):
                f.write(json.dumps(dict(r, id=i), ensure_ascii=False) + "\n")
        for mode, flags in MODES.items():
            want = None if t.name in LOOKS or (t.name, mode) in LOOKS else True
            ok &= compare(f"memo {t.name} {mode}", t.dsfmt_cmd(*flags), path, want_replays=want)
    if qwen is None:
        print("skip - memo adversarial templates: no qwen2_5 model")
        return 0
    for entry in C.manifest():
        t = C.Template(entry, tmp)
        if t.skip or t.name not in ("qwen2_5", "llama3_2", "gemma3", "mistral_v0_3"):
            continue
        base = [r for r in conversations(t.features) if t.render(r["messages"], r.get("tools"))[0] == "ok"]
        path = os.path.join(tmp, t.name + ".lines.jsonl")
        with open(path, "wb") as f:
            f.write(b"\n".join(line_records(base, rng)) + b"\n")
        for mode, flags in MODES.items():
            want = mode not in ("genprompt",) and (t.name, mode) not in LOOKS
            ok &= compare(f"memo lines {t.name} {mode}", t.dsfmt_cmd(*flags), path, want_replays=None,
                          want_unparsed=want)
    recs = []
    for r in [r for r in conversations(qwen.features) if "tool_calls" not in json.dumps(r)][:30]:
        recs.append(r)
        recs.extend(C.vary_contents(r, rng) for _ in range(VARIANTS))
    path = os.path.join(tmp, "adversarial.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(recs):
            f.write(json.dumps({"id": i, "messages": r["messages"]}, ensure_ascii=False) + "\n")
    for name, body, replays in ADVERSARIAL:
        tpl = os.path.join(tmp, f"adv-{name}.jinja")
        with open(tpl, "w", encoding="utf-8") as f:
            f.write(CHATML.replace("{BODY}", body))
        cmd = [C.DSFMT, "--model", qwen.model, "--template", tpl]
        ok &= compare(f"memo template {name}", cmd, path, want_replays=replays)
    ok &= check_sames(qwen, tmp, rng)
    ok &= check_apart(qwen, tmp, rng)
    return 0 if ok else 1


def write_template(tmp, name, text):
    tpl = os.path.join(tmp, name + ".jinja")
    with open(tpl, "w", encoding="utf-8") as f:
        f.write(text)
    return tpl


def check_sames(qwen, tmp, rng):
    """Two messages compared that are equal but for their contents: the memo keeps
    whether the contents were the same, and a record where they are not as they were
    is rendered. Contents from three words, so that both happen often."""
    tpl = write_template(tmp, "sames", CHATML.replace("{BODY}", "{% if m == messages[0] %}F{% endif %}{{ m.content }}"))
    path = os.path.join(tmp, "sames.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(120):
            turns = rng.choice([1, 2, 3])
            msgs = []
            for _ in range(turns):
                msgs += [{"role": "user", "content": rng.choice(["x", "yes", "no"])},
                         {"role": "assistant", "content": rng.choice(["x", "yes", "no"])}]
            f.write(json.dumps({"id": i, "messages": msgs}) + "\n")
    ok = True
    for mode, flags in MODES.items():
        ok &= compare(f"memo template message-eq (contents the same or not) {mode}",
                      [C.DSFMT, "--model", qwen.model, "--template", tpl] + flags, path, want_replays=True)
    return ok


# The system prompt printed in the last user message only, as Mistral's templates do: the
# rendering before a turn is not the whole one's beginning, and the turn starts at its
# content. Unless the contents make it the beginning after all (system "A[/INST]", user
# "A"): then the turn starts where that rendering ends, and ">> " is learned too.
APART = ("{%- if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set msgs = messages[1:] %}"
         "{%- else %}{% set msgs = messages %}{% endif %}"
         "{%- for m in msgs %}{% if m.role == 'user' %}[INST]{% if loop.last and sys is defined %}{{ sys }} {% endif %}"
         "{{ m.content }}[/INST]{% else %} A[/INST]>> {{ m.content }}<|im_end|>{% endif %}{% endfor %}")


def check_apart(qwen, tmp, rng):
    tpl = write_template(tmp, "apart", APART)
    path = os.path.join(tmp, "apart.jsonl")
    words = ["hello", "Be brief.", "what is it?", "A", "A[/INST]"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(120):
            odd = i and rng.random() < 0.3
            msgs = [{"role": "system", "content": "A[/INST]" if odd else rng.choice(words)}]
            for t in range(rng.choice([1, 2])):
                msgs += [{"role": "user", "content": "A" if odd and t == 0 else rng.choice(words)},
                         {"role": "assistant", "content": rng.choice(words)}]
            f.write(json.dumps({"id": i, "messages": msgs}) + "\n")
    cmd = [C.DSFMT, "--model", qwen.model, "--template", tpl]
    rc, out, _ = run(cmd + ["--no-memo"], path)
    header = 0  # records whose rendering learns ">> ": the case the replay must catch
    for line in out.splitlines():
        r = json.loads(line)
        header += any(r["text"].encode()[s:s + 3] == b">> " for s, _ in r["train"])
    if rc != 0 or not header:
        print(f"not ok - memo template apart: no record learns the header (exit {rc})")
        return False
    ok = True
    for mode, flags in MODES.items():
        ok &= compare(f"memo template apart ({header} records learn the header) {mode}", cmd + flags, path,
                      want_replays=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
