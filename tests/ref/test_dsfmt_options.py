"""ds-fmt's options and input forms against transformers' apply_chat_template.

tests/ref/test_dsfmt_hf.py checks every template with OpenAI records and default
flags; this test checks what the options change, on a few templates (default
qwen2_5, llama3_2, gemma3 and qwen3; DSFMT_TEMPLATES=a,b picks others from
tests/ref/templates/manifest.json). For each option and template ds-fmt runs once
(with --skip-bad) over all of its records; the reference is the OpenAI conversation
the option must produce, built here in Python from ds-fmt's documented behaviour
(man/ds-fmt.1), never from ds-fmt's output, and rendered by transformers.

Cases, per template (each: "NAME TEMPLATE" for the render, "passthrough NAME TEMPLATE"
for the keys that pass through, "spans NAME TEMPLATE" for the spans, by test_dsfmt_hf's
references with the same template variables: prefix renders, or transformers' assistant
masks for {% generation %} templates; a skip line where transformers renders none):
  train-turns-last  --train-turns last on the conversations of make_conversations'
                    option_conversations: the text as the default render; spans: the last
                    assistant turn's reference span only, and no other trained byte.
  system            --system TEXT: records without a system message render as with
                    {"role":"system","content":TEXT} first; those with one, unchanged.
  tools             --tools FILE (make_conversations.TOOLS_FILE): records without a tool
                    list (none, or null) render with tools=FILE's list; records with one
                    (also []) keep theirs.
  var               --var NAME=JSON for each variable of VARS[template], passed to
                    apply_chat_template as keyword arguments (qwen3 enable_thinking=false,
                    llama3_2 date_string and tools_in_user_message=false, gemma3 bos_token;
                    an unread one elsewhere); also with --add-generation-prompt ("var-genprompt").
                    Where the variables are read, some renders must differ from the
                    default ones (else the case fails: it would prove nothing).
  auto              OpenAI, Alpaca and ShareGPT records in one input, the form recognized
                    per record (messages, then conversations, then instruction).
  alpaca            --input-format alpaca (make_conversations.ALPACA, and one record that
                    also has "messages", which the forced form ignores).
  sharegpt          --input-format sharegpt (SHAREGPT, with function_call/observation turns
                    where the template takes tool calls, and one record that also has
                    "messages").
  jq                --jq make_conversations.JQ_FILTER over JQ_RECORDS ({"q","a"} or
                    {"turns":[...]}, "sys", "meta").
and, with qwen2_5, on "qwen2_5_list": a tokenizer_config.json chat_template list of a
"default" template that ignores tools and Qwen2.5's as "tool_use": "default" (no flags;
records with a tool list take "tool_use") and "tools" (--tools: every record does).
Every case also checks that the keys ds-fmt does not consume pass through unchanged.
The mapping the reference follows (man/ds-fmt.1, "Input records"):
  Alpaca    [system: "system" when a non-empty string] + user: instruction, plus "\n" and
            input when input is a non-empty string + assistant: output.
  ShareGPT  [system: "system" when a non-empty string] + per turn: human|user -> user,
            gpt|assistant -> assistant, system -> system, observation|tool|function_response
            -> tool, function_call -> assistant with content null and tool_calls
            [{"type":"function","function":CALL}] for the JSON object CALL or each CALL of a
            JSON list; "tools" a list or the JSON text of one.
Environment: DSFMT_TEMPLATES, LORAPIPE_DSFMT, LORAPIPE_FIXTURES as in test_dsfmt_hf.py.
"""
import copy
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsfmt_common as C  # noqa: E402
import make_conversations as MC  # noqa: E402
import test_dsfmt_hf as H  # noqa: E402

TEMPLATES = ["qwen2_5", "llama3_2", "gemma3", "qwen3"]
SYSTEM = "Du bist ein Bankassistent. Отвечай кратко. 🏦"
# Template variables per template: (variables, the renders they change: "render" the
# conversation, "genprompt" the prompt with --add-generation-prompt). Qwen3's
# enable_thinking=false changes the prompt only (and, through it, the learned spans).
VARS = {
    "qwen3": ({"enable_thinking": False}, ("genprompt",)),
    "llama3_2": ({"date_string": "26 Jul 2024", "tools_in_user_message": False}, ("render", "genprompt")),
    "llama3_1_tools": ({"date_string": "26 Jul 2024", "tools_in_user_message": False}, ("render", "genprompt")),
    "gemma3": ({"bos_token": "<bos>[var]"}, ("render", "genprompt")),
}
UNREAD_VARS = ({"lorapipe_unused": {"a": [1, "x", None]}, "enable_thinking": False}, ())
have_dsfmt = True
# What ds-fmt takes from a record (man/ds-fmt.1): everything else passes through.
CONSUMED = {"messages", "tools", "conversations", "instruction", "input", "output", "system"}


def msg(role, content):
    return {"role": role, "content": content}


# ---------------------------------------------------------------- the references

def with_system(r, text):
    msgs = r["messages"]
    if msgs and msgs[0].get("role") == "system":
        return r
    return dict(r, messages=[msg("system", text)] + msgs)


def with_tools(r, tools):
    if r.get("tools") is not None:
        return r
    return dict(r, tools=tools)


def from_alpaca(r):
    user = r["instruction"]
    if isinstance(r.get("input"), str) and r["input"] != "":
        user += "\n" + r["input"]
    msgs = [msg("system", r["system"])] if isinstance(r.get("system"), str) and r["system"] else []
    msgs.append(msg("user", user))
    if isinstance(r.get("output"), str):
        msgs.append(msg("assistant", r["output"]))
    return {"id": r["id"], "messages": msgs}


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "observation": "tool", "tool": "tool", "function_response": "tool"}


def from_sharegpt(r):
    msgs = [msg("system", r["system"])] if isinstance(r.get("system"), str) and r["system"] else []
    for turn in r["conversations"]:
        if turn["from"] == "function_call":
            calls = json.loads(turn["value"])
            calls = calls if isinstance(calls, list) else [calls]
            msgs.append({"role": "assistant", "content": None,
                         "tool_calls": [{"type": "function", "function": c} for c in calls]})
        else:
            msgs.append(msg(ROLES[turn["from"]], turn["value"]))
    out = {"id": r["id"], "messages": msgs}
    tools = r.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools)
    if isinstance(tools, list):
        out["tools"] = tools
    return out


def from_jq(r):
    """What JQ_FILTER makes of a JQ_RECORDS record, written out in Python."""
    msgs = [msg("system", r["sys"])] if r.get("sys") else []
    for qa in r.get("turns") or [{"q": r.get("q"), "a": r.get("a")}]:
        msgs += [msg("user", qa["q"]), msg("assistant", qa["a"])]
    out = {"id": r["id"], "messages": msgs}
    if r.get("meta"):
        out["meta"] = r["meta"]
    return out


def passthrough(r):
    return {k: v for k, v in r.items() if k not in CONSUMED}


# ---------------------------------------------------------------------- one case

def check(t, tmp, name, inputs, refrecs, flags, kw=None, last_only=False, agp=False, keep=None,
          differ_from=None):
    """Runs ds-fmt once over inputs with flags and reports: the render against
    transformers on refrecs (same ids), the pass-through keys (keep: {id: keys},
    default the inputs' unconsumed keys), and the spans (or train == [] with agp).
    differ_from: (default-flag references, required) — counts the renders the option
    changes, and fails when required and none changed."""
    kw = kw or {}
    refs = {r["id"]: t.render(r["messages"], r.get("tools"), agp, **kw) for r in refrecs}
    if differ_from is not None:
        base, required = differ_from
        n = sum(1 for i, v in refs.items() if v[0] == "ok" and base.get(i) != v)
        H.report(n > 0 or not required, f"{name} {t.name}: {n} of {len(refs)} transformers renders differ "
                 f"from the default ones{'' if required else ' (none need to)'}",
                 "the option changes no render: the case proves nothing")
    if not have_dsfmt:
        return
    got, err, rc = H.run_dsfmt(t, inputs, flags, tmp, tag=name)
    if rc != 0 and len(got) <= 1:
        H.report(False, f"{name} {t.name}", f"ds-fmt {' '.join(flags)} exited {rc}: {err.strip()[:400]}")
        return
    H.compare_renders(t, inputs, got, refs, name)
    keep = keep or {r["id"]: passthrough(r) for r in inputs}
    bad = []
    for i, want in keep.items():
        rec = got.get(i)
        if rec is None:
            continue
        have = {k: v for k, v in rec.items() if k not in ("text", "train", "expected")}
        if have != want:
            bad.append(f"{i}: passed through {json.dumps(have, ensure_ascii=False)[:160]}, "
                       f"want {json.dumps(want, ensure_ascii=False)[:160]}")
    H.report(not bad, f"passthrough {name} {t.name}", f"{len(bad)} records", bad[:H.SHOW])
    if agp:
        nonempty = [k for k, v in got.items() if k != H.SKIP_REASONS and v.get("train")]
        H.report(not nonempty, f"spans {name} {t.name}: train is []", f"{len(nonempty)} records: {nonempty[:5]}")
        return
    if not any(v[0] == "ok" for v in refs.values()):
        H.say(f"skip - spans {name} {t.name}: transformers renders none of these records")
        return
    if t.features.get("generation"):
        # {% generation %} templates need not honor add_generation_prompt: transformers'
        # assistant masks are the reference (as in test_dsfmt_hf); with --train-turns last,
        # the mask's last run (the last assistant turn's block).
        n, n_match, n_missing, bad = H.check_spans_generation(t, refrecs, refs, got, kw, last_only)
        H.report(not bad and n_match > 0, f"spans {name} {t.name} (assistant_masks{', last run' if last_only else ''}): "
                 f"{n_match}/{n} conversations agree"
                 + (f", {n_missing} without ds-fmt output" if n_missing else ""),
                 f"{len(bad)} disagree" if bad else "no conversation to compare", bad[:H.SHOW])
        return
    n_turns, n_checked, n_match, n_nc, n_missing, reasons, bad = H.check_spans_prefix(
        t, refrecs, refs, got, kw, last_only)
    why = "; ".join(f"{v} {k}" for k, v in sorted(reasons.items()))
    H.report(not bad and n_checked > 0,
             f"spans {name} {t.name} (prefix renders{', last turn' if last_only else ''}): "
             f"{n_match}/{n_checked} checked turns agree, {n_nc} of {n_turns} not checkable"
             + (f" ({why})" if why else "")
             + (f"; {n_missing} conversations without ds-fmt output" if n_missing else ""),
             f"{len(bad)} conversations disagree" if bad else "no turn checked", bad[:H.SHOW])


def run_template(t, tmp):
    f = t.features
    conv = MC.option_conversations(f)
    base = {r["id"]: t.render(r["messages"], r.get("tools"), False) for r in conv}

    check(t, tmp, "train-turns-last", conv, conv, ["--train-turns", "last"], last_only=True)

    check(t, tmp, "system", conv, [with_system(r, SYSTEM) for r in conv], ["--system", SYSTEM],
          differ_from=(base, True))

    tools_file = os.path.join(tmp, "tools.json")
    tconv = conv + [dict(conv[0], id="tools-null", tools=None)]
    if f.get("tools"):
        tconv.append(dict(conv[0], id="tools-empty", tools=[]))
    check(t, tmp, "tools", tconv, [with_tools(r, MC.TOOLS_FILE) for r in tconv], ["--tools", tools_file],
          differ_from=(base, bool(f.get("tools"))))

    kw, changes = VARS.get(t.name, UNREAD_VARS)
    vflags = [x for k, v in kw.items() for x in ("--var", f"{k}={json.dumps(v, ensure_ascii=False)}")]
    check(t, tmp, "var", conv, conv, vflags, kw=kw, differ_from=(base, "render" in changes))
    gp = [dict(r, messages=C.gen_prompt_messages(r["messages"])) for r in conv]
    base_gp = {r["id"]: t.render(r["messages"], r.get("tools"), True) for r in gp}
    check(t, tmp, "var-genprompt", conv, gp, vflags + ["--add-generation-prompt"], kw=kw, agp=True,
          differ_from=(base_gp, "genprompt" in changes))

    alp = [dict(r) for r in MC.ALPACA]
    sg = [dict(r) for r in MC.sharegpt_records(f)]
    oa = [dict(r, id="openai-" + r["id"]) for r in conv[:6]]
    # both "conversations" and "instruction": the record is ShareGPT
    both = dict(MC.SHAREGPT[1], id="sg-and-alpaca", instruction="ignored", output="ignored")
    mixed = oa + alp + sg + [both]
    ref = oa + [from_alpaca(r) for r in alp] + [from_sharegpt(r) for r in sg] + [from_sharegpt(both)]
    check(t, tmp, "auto", mixed, ref, [])

    # forced forms: a record that also has "messages" (auto would take it as OpenAI)
    decoy = [msg("user", "decoy"), msg("assistant", "decoy")]
    alp2 = alp + [dict(MC.ALPACA[1], id="alpaca-with-messages", messages=decoy)]
    check(t, tmp, "alpaca", alp2, [from_alpaca(r) for r in alp2], ["--input-format", "alpaca"])
    sg2 = sg + [dict(MC.SHAREGPT[2], id="sg-with-messages", messages=decoy)]
    check(t, tmp, "sharegpt", sg2, [from_sharegpt(r) for r in sg2], ["--input-format", "sharegpt"])

    jqref = [from_jq(r) for r in MC.JQ_RECORDS]
    check(t, tmp, "jq", MC.JQ_RECORDS, jqref, ["--jq", MC.JQ_FILTER],
          keep={r["id"]: passthrough(r) for r in jqref})


# A chat_template list (tokenizer_config.json): "default" ignores tools, "tool_use" is
# Qwen2.5's; --tools must select "tool_use" for records without their own list, as
# transformers does for tools that are not None.
PLAIN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def run_template_list(t, tmp):
    """t: the qwen2_5 template, made into a list of two (same tokenizer)."""
    t = copy.copy(t)
    t.name = "qwen2_5_list"
    d = os.path.join(tmp, t.name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(t.model, "tokenizer.json"), d)
    with open(os.path.join(t.model, "tokenizer_config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg["chat_template"] = [{"name": "default", "template": PLAIN_TEMPLATE},
                            {"name": "tool_use", "template": t.text}]
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, ensure_ascii=False)
    t.model = t.tok_model = d
    t.hf = copy.copy(t.hf)
    t.hf.chat_template = {"default": PLAIN_TEMPLATE, "tool_use": t.text}
    conv = MC.option_conversations(t.features)
    # (the plain template prints no tool calls: ds-fmt refuses such turns, nothing to learn)
    plain = [r for r in conv if not any(m.get("tool_calls") for m in r["messages"])]
    base = {r["id"]: t.render(r["messages"], r.get("tools"), False) for r in conv}
    check(t, tmp, "default", plain, plain, [])
    check(t, tmp, "tools", conv, [with_tools(r, MC.TOOLS_FILE) for r in conv],
          ["--tools", os.path.join(tmp, "tools.json")], differ_from=(base, True))


def main():
    global have_dsfmt
    t0 = time.time()
    have_dsfmt = os.access(C.DSFMT, os.X_OK)
    if not have_dsfmt:
        H.report(False, "ds-fmt not built", f"{C.DSFMT} is missing; only the transformers side runs below")
    only = [x for x in os.environ.get("DSFMT_TEMPLATES", "").split(",") if x] or TEMPLATES
    tmp = tempfile.mkdtemp(prefix="dsfmt-opt-")
    with open(os.path.join(tmp, "tools.json"), "w", encoding="utf-8") as fh:
        json.dump(MC.TOOLS_FILE, fh, ensure_ascii=False)
    n = 0
    for entry in C.manifest():
        if entry["name"] not in only:
            continue
        t = C.Template(entry, tmp)
        if t.skip:
            H.say(f"skip - {entry['name']}: {t.skip}")
            continue
        n += 1
        run_template(t, tmp)
        if t.name == "qwen2_5":
            run_template_list(t, tmp)
    H.say(f"# {n} templates, {time.time() - t0:.1f}s")
    if H.failed and have_dsfmt:
        H.say(f"# ds-fmt's inputs and outputs kept in {tmp} (NAME.CASE.in.jsonl, NAME.CASE.out.jsonl)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if H.failed else 0


if __name__ == "__main__":
    sys.exit(main())
