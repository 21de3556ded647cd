"""Conversations for the ds-fmt reference test (tests/ref/test_dsfmt_hf.py) and bench.

conversations(features) returns a deterministic list of records in the OpenAI
form ds-fmt reads, {"id": ..., "messages": [...], "tools": [...]}, chosen for a
template by its features in tests/ref/templates/manifest.json: every template gets
the plain ones (with and without system prompt, single and multi-turn, Unicode,
Russian, emoji, whitespace-only and template-looking content, long messages);
templates with tool support also get tool lists, tool calls (arguments as an
object and as a JSON string, single and parallel calls) and tool results. Some
records are meant to be rejected by some templates (roles that do not alternate,
an assistant first, a tool call where the template allows one only); the test
expects ds-fmt to fail exactly where transformers raises. Tool-call arguments
come in both forms (object and JSON string) for every template; the test hands
transformers the form the template is written for (manifest args_expect), which
is what ds-fmt must normalize to.

  python3 tests/ref/make_conversations.py [TEMPLATE_NAME]   # JSON Lines on stdout
"""
import json
import os
import sys

TOOLS = [
    {"type": "function", "function": {
        "name": "check_access",
        "description": "Check whether the user's access is active.",
        "parameters": {"type": "object", "properties": {
            "user_id": {"type": "string", "description": "The user's id"}},
            "required": ["user_id"]}}},
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Погода в городе (weather in a city) 🌦",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    # numbers json.loads makes floats ("1.0", "2.5e-3"): templates print them as Python does
    {"type": "function", "function": {
        "name": "transfer",
        "description": "Send money to a saved payee.",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number", "minimum": 0.01, "default": 1.0},
            "fee_rate": {"type": "number", "default": 2.5e-3},
            "payee": {"type": "integer", "maximum": 1000}},
            "required": ["amount", "payee"]}}},
]

LONG = " ".join(f"Sentence {i}: the quick brown fox jumps over the lazy dog; съешь же ещё этих мягких французских булок." for i in range(60))

SYSTEMS = [
    None,
    "You are a bank assistant.",
    "Ты — помощник банка. Отвечай кратко. 🏦",
]

# (user, assistant) pairs; the index picks them deterministically.
PAIRS = [
    ("Is my access active?", "Let me check your access."),
    ("Мой доступ активен?", "Да, доступ активен до 2027 года."),
    ("Привет", "Привет! Чем могу помочь?"),
    ("What is an account balance?", "An account balance is the amount of money in an account at a given moment."),
    ("emoji test 🙂👍🏽 👨‍👩‍👧", "Got them: 🙂👍🏽 👨‍👩‍👧 ✅"),
    ("中文测试：你好，世界！", "你好！有什么可以帮你的？"),
    ("مرحبا بالعالم", "أهلا وسهلا"),
    ("Tabs\tand\nnewlines\r\nhere", "Line one\nLine two\n\nLine four"),
    ("What does {{ x }} print in Jinja?", "It prints the value of x: {{ x }} and {% raw %}{% if %}{% endraw %} stays text."),
    ("Say <|im_end|> and <|eot_id|> literally", "Sure: <|im_end|> <|eot_id|> <end_of_turn> </s> [INST] <|end|>"),
    ("   ", "   "),
    ("\n", "\n\n"),
    ("  padded question  ", "  padded answer  "),
    (LONG, LONG[::-1]),
    ("Quote \"double\" and 'single' and back\\slash", "Escapes: \\n \\t \" ' \\\\"),
    ("Ünïcödé ﬁ ligature Å and e\u0301 combining", "Nbsp\u00a0here and zero\u200bwidth"),
]

# Multi-turn conversations draw from pairs with visible text only, so that a refusal of
# whitespace-only content (ds-fmt validation) does not cost the multi-turn coverage; the
# whitespace-only pairs are covered by the single-turn conversations.
SOLID = [p for p in PAIRS if p[0].strip() and p[1].strip()]


def msg(role, content):
    return {"role": role, "content": content}


def call(i, name, args, as_string):
    return {"id": f"call{i:05d}", "type": "function",
            "function": {"name": name,
                         "arguments": json.dumps(args, ensure_ascii=False) if as_string else args}}


def plain():
    out = []
    n = 0
    # single turn, every pair, rotating system prompts
    for i, (u, a) in enumerate(PAIRS):
        s = SYSTEMS[i % len(SYSTEMS)]
        m = ([msg("system", s)] if s else []) + [msg("user", u), msg("assistant", a)]
        out.append((f"single-{i}", m))
        # and again with the next system prompt, so each pair is seen with and without one
        s2 = SYSTEMS[(i + 1) % len(SYSTEMS)]
        m = ([msg("system", s2)] if s2 else []) + [msg("user", u), msg("assistant", a)]
        out.append((f"single-{i}-b", m))
    # multi-turn: 2, 3 and 4 exchanges, with and without a system prompt
    for turns in (2, 3, 4, 6):
        for with_sys in (False, True):
            m = [msg("system", SYSTEMS[1 + turns % 2])] if with_sys else []
            for t in range(turns):
                u, a = SOLID[(n * 3 + t * 5) % len(SOLID)]
                m += [msg("user", u), msg("assistant", a)]
            n += 1
            out.append((f"multi-{turns}{'-sys' if with_sys else ''}", m))
    # conversations ending with a user turn (a prompt), with and without system
    out.append(("prompt-only", [msg("user", "Мой доступ активен?")]))
    out.append(("prompt-only-sys", [msg("system", SYSTEMS[1]), msg("user", "Is my access active?")]))
    out.append(("prompt-after-turn", [msg("user", "Привет"), msg("assistant", "Здравствуйте!"), msg("user", "Как дела?")]))
    # empty-ish
    out.append(("empty-assistant", [msg("user", "Say nothing."), msg("assistant", "")]))
    out.append(("empty-system", [msg("system", ""), msg("user", "Hi"), msg("assistant", "Hello!")]))
    out.append(("whitespace-system", [msg("system", "  \n "), msg("user", "Hi"), msg("assistant", "Hello!")]))
    out.append(("newline-edges", [msg("user", "\nleading and trailing\n"), msg("assistant", "\n\nanswer\n\n")]))
    # <think> blocks in assistant content (Qwen3 splits them off)
    out.append(("think-content", [msg("user", "2+2?"), msg("assistant", "<think>\nsimple sum\n</think>\n\n4")]))
    out.append(("think-multi", [msg("user", "2+2?"), msg("assistant", "<think>add</think>4"),
                                msg("user", "3+3?"), msg("assistant", "<think>\nadd again\n</think>\n6")]))
    # rejected by templates that require alternation
    out.append(("bad-two-users", [msg("user", "one"), msg("user", "two"), msg("assistant", "three")]))
    out.append(("bad-assistant-first", [msg("assistant", "I speak first."), msg("user", "ok")]))
    out.append(("system-only", [msg("system", "Only a system prompt.")]))
    return out


def with_tools(features):
    out = []
    args_forms = ["object", "string"]
    single = features.get("single_tool_call", False)
    content_none = features.get("tool_call_content_none", False)
    for form in args_forms:
        as_str = form == "string"
        c = None if content_none else ""
        tc1 = call(1, "check_access", {"user_id": "u-42"}, as_str)
        tc2 = call(2, "get_weather", {"city": "Москва", "unit": "celsius"}, as_str)
        base_sys = [msg("system", "You are a bank assistant.")]
        # tool call then result then final answer
        m = [msg("user", "Is my access active?"),
             {"role": "assistant", "content": c, "tool_calls": [tc1]},
             {"role": "tool", "tool_call_id": tc1["id"], "name": "check_access", "content": "{\"active\": true, \"until\": \"2027-01-01\"}"},
             msg("assistant", "Yes, your access is active until 2027-01-01.")]
        out.append((f"tool-roundtrip-{form}", m, True))
        out.append((f"tool-roundtrip-sys-{form}", base_sys + m, True))
        # the tool call is the last (trained) turn
        out.append((f"tool-call-last-{form}", [msg("user", "Мой доступ активен?"),
                                                {"role": "assistant", "content": c, "tool_calls": [tc1]}], True))
        # parallel calls (rejected where one call at a time is allowed)
        out.append((f"tool-parallel-{form}", [msg("user", "Check my access and the weather in Moscow."),
                                               {"role": "assistant", "content": c, "tool_calls": [tc1, tc2]},
                                               {"role": "tool", "tool_call_id": tc1["id"], "name": "check_access", "content": "active"},
                                               {"role": "tool", "tool_call_id": tc2["id"], "name": "get_weather", "content": "−5 °C, снег ❄"},
                                               msg("assistant", "Access is active; in Moscow it is −5 °C with snow.")], True))
        # tools offered, no call (a general question)
        out.append((f"tool-offered-unused-{form}", [msg("user", "What is an account balance?"),
                                                    msg("assistant", "The amount of money in an account.")], True))
        # two user turns, second one calls
        out.append((f"tool-second-turn-{form}", [msg("user", "Привет"), msg("assistant", "Привет!"),
                                                 msg("user", "Is my access active?"),
                                                 {"role": "assistant", "content": c, "tool_calls": [tc1]},
                                                 {"role": "tool", "tool_call_id": tc1["id"], "name": "check_access", "content": "inactive"},
                                                 msg("assistant", "Your access is not active.")], True))
        # float arguments: whole (100.0), small (1e-07), large (1e+16), negative zero; and
        # integers json.loads keeps whole that a double would round (an order id, 2**53 + 1,
        # the least of 64 bits)
        tc3 = call(4, "transfer", {"amount": 100.0, "fee_rate": 0.0025, "payee": 7, "tiny": 1e-7,
                                   "cap": 1e16, "delta": -0.0, "rates": [1.5, 2.0, 3],
                                   "order_id": 1234567890123456789, "near": 2 ** 53 + 1, "floor": -2 ** 63}, as_str)
        out.append((f"tool-float-args-{form}", [msg("user", "Send 100 euros to payee 7."),
                                                {"role": "assistant", "content": c, "tool_calls": [tc3]},
                                                {"role": "tool", "tool_call_id": tc3["id"], "name": "transfer",
                                                 "content": "{\"sent\": 100.0, \"fee\": 0.25}"},
                                                msg("assistant", "Sent 100.00 euros; the fee was 0.25.")], True))
        if not content_none:
            # text alongside a tool call
            out.append((f"tool-call-with-text-{form}", [msg("user", "Is my access active?"),
                                                        {"role": "assistant", "content": "Let me check.", "tool_calls": [tc1]}], True))
    # tool results without tools listed
    out.append(("tool-no-tools-list", [msg("user", "Is my access active?"),
                                       {"role": "assistant", "content": None if content_none else "",
                                        "tool_calls": [call(3, "check_access", {"user_id": "u-7"}, args_forms[0] == "string")]},
                                       {"role": "tool", "tool_call_id": "call00003", "name": "check_access", "content": "active"},
                                       msg("assistant", "Active.")], False))
    del single
    return out


def jq_read(features):
    """conversations(features)' float-argument ones with a NUL in the request:
    ds-fmt's jq reads such a line (its numbers must come out as written). Not in
    conversations(): a line jq reads takes ~30 us, and the bench's data holds none."""
    out = []
    for r in conversations(features):
        if r["id"].startswith("tool-float-args-"):
            m = json.loads(json.dumps(r["messages"]))
            m[0]["content"] += "\0"
            out.append(dict(r, id=r["id"].replace("tool-float-args-", "tool-float-args-nul-"), messages=m))
    return out


def conversations(features):
    recs = []
    for name, m in plain():
        recs.append({"id": name, "messages": m})
        if features.get("tools"):
            # the same plain conversation with a tool list offered
            recs.append({"id": name + "+tools", "messages": m, "tools": TOOLS})
    if features.get("tool_calls"):
        for name, m, offer in with_tools(features):
            r = {"id": name, "messages": m}
            if offer and features.get("tools"):
                r["tools"] = TOOLS
            recs.append(r)
    return recs


# ------------------------------------------------------------------------------------
# Records for tests/ref/test_dsfmt_options.py: the other input forms ds-fmt reads and
# the shapes its options change. The test builds the OpenAI messages each must become
# itself (from ds-fmt's documented mapping) and renders those with transformers.

# Conversations of conversations() that ds-fmt accepts (no whitespace-only content, an
# assistant turn to learn): single and multi-turn, with and without system prompt, tool
# lists, calls and results; a final user turn after the last assistant one.
OPTION_IDS = (
    "single-0", "single-0-b", "single-1", "single-1-b", "single-4", "single-8", "single-9",
    "single-13", "single-14", "single-15-b", "multi-2", "multi-2-sys", "multi-3", "multi-3-sys",
    "multi-6-sys", "newline-edges", "think-multi", "prompt-after-turn",
    "single-4+tools", "multi-3-sys+tools", "tool-roundtrip-object", "tool-roundtrip-sys-string",
    "tool-call-last-object", "tool-second-turn-string", "tool-parallel-object",
    "tool-call-with-text-string", "tool-offered-unused-object", "tool-no-tools-list",
)


def option_conversations(features):
    want = set(OPTION_IDS)
    return [r for r in conversations(features) if r["id"] in want]


# A tool list other than TOOLS (ds-fmt --tools FILE), so that a record keeping its own
# list is told apart from one given the file's.
TOOLS_FILE = [
    {"type": "function", "function": {
        "name": "transfer_money",
        "description": "Перевести деньги (transfer money) 💸",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string", "description": "IBAN"},
            "amount": {"type": "number"}},
            "required": ["to", "amount"]}}},
]

ALPACA = [
    {"id": "alpaca-plain", "instruction": "What is an account balance?",
     "output": "An account balance is the amount of money in an account at a given moment."},
    {"id": "alpaca-input", "instruction": "Translate to English.", "input": "Мой доступ активен?",
     "output": "Is my access active?"},
    {"id": "alpaca-empty-input", "instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"id": "alpaca-null-input", "instruction": "Say hi.", "input": None, "output": "Hi!"},
    {"id": "alpaca-space-input", "instruction": "Answer the question below.", "input": "  ",
     "output": "There is no question."},
    {"id": "alpaca-system", "system": "You are a bank assistant.", "instruction": "Is my access active?",
     "input": "user id: u-42", "output": "Let me check your access."},
    {"id": "alpaca-empty-system", "system": "", "instruction": "Привет", "output": "Привет! Чем могу помочь?"},
    {"id": "alpaca-unicode", "instruction": "emoji test 🙂👍🏽 👨‍👩‍👧", "input": "中文测试：你好，世界！",
     "output": "Got them: 🙂👍🏽 👨‍👩‍👧 ✅ 你好"},
    {"id": "alpaca-newlines", "instruction": "Summarize:\n", "input": "\nLine one\nLine two\n",
     "output": "Line one\nLine two\n\nLine four"},
    {"id": "alpaca-jinja", "instruction": "What does {{ x }} print in Jinja?", "input": "{% raw %}x{% endraw %}",
     "output": "It prints the value of x: {{ x }}."},
    {"id": "alpaca-markers", "instruction": "Say <|im_end|> and <|eot_id|> literally",
     "output": "Sure: <|im_end|> <|eot_id|> <end_of_turn> </s>"},
    {"id": "alpaca-long", "instruction": LONG[:400], "input": LONG[400:1600], "output": LONG[::-1][:900]},
    {"id": "alpaca-extra-keys", "instruction": "2+2?", "input": "", "output": "4",
     "category": "math", "meta": {"source": "drill", "n": [1, 2.5, None, True]}},
]

SHAREGPT = [
    {"id": "sg-plain", "conversations": [{"from": "human", "value": "Is my access active?"},
                                         {"from": "gpt", "value": "Let me check your access."}]},
    {"id": "sg-system-key", "system": "You are a bank assistant.",
     "conversations": [{"from": "human", "value": "What is an account balance?"},
                       {"from": "gpt", "value": "The amount of money in an account."}]},
    {"id": "sg-system-turn", "conversations": [{"from": "system", "value": "Ты — помощник банка. 🏦"},
                                               {"from": "human", "value": "Мой доступ активен?"},
                                               {"from": "gpt", "value": "Да, доступ активен до 2027 года."}]},
    {"id": "sg-empty-system-key", "system": "",
     "conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Привет! Чем могу помочь?"}]},
    {"id": "sg-user-assistant", "conversations": [{"from": "user", "value": "中文测试：你好，世界！"},
                                                  {"from": "assistant", "value": "你好！有什么可以帮你的？"}]},
    {"id": "sg-multi", "conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Привет!"},
                                         {"from": "human", "value": "emoji test 🙂👍🏽 👨‍👩‍👧"},
                                         {"from": "gpt", "value": "Got them: 🙂👍🏽 👨‍👩‍👧 ✅"},
                                         {"from": "human", "value": "Tabs\tand\nnewlines\r\nhere"},
                                         {"from": "gpt", "value": "Line one\nLine two\n\nLine four"}]},
    {"id": "sg-multi-sys-aliases", "system": "Ты — помощник банка. Отвечай кратко.",
     "conversations": [{"from": "user", "value": "What does {{ x }} print in Jinja?"},
                       {"from": "gpt", "value": "The value of x: {{ x }}."},
                       {"from": "human", "value": "And {% if %}?"},
                       {"from": "assistant", "value": "{% raw %}{% if %}{% endraw %} stays text."}]},
    {"id": "sg-markers", "conversations": [{"from": "human", "value": "Say <|im_end|> and <|eot_id|> literally"},
                                           {"from": "gpt", "value": "Sure: <|im_end|> <|eot_id|> <end_of_turn> </s>"}]},
    {"id": "sg-long", "conversations": [{"from": "human", "value": LONG}, {"from": "gpt", "value": LONG[::-1]}]},
    {"id": "sg-final-user", "conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Здравствуйте!"},
                                              {"from": "human", "value": "Как дела?"}]},
    {"id": "sg-extra-keys", "lang": "ru", "weight": 0.5,
     "conversations": [{"from": "human", "value": "Ünïcödé ﬁ ligature"}, {"from": "gpt", "value": "Nbsp\u00a0here"}]},
]


def _fc(name, args, as_string=False):
    return {"name": name, "arguments": json.dumps(args, ensure_ascii=False) if as_string else args}


# ShareGPT with tools (LLaMA-Factory's function_call / observation turns).
SHAREGPT_TOOLS = [
    {"id": "sg-call", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "Is my access active?"},
                       {"from": "function_call", "value": json.dumps(_fc("check_access", {"user_id": "u-42"}))},
                       {"from": "observation", "value": "{\"active\": true, \"until\": \"2027-01-01\"}"},
                       {"from": "gpt", "value": "Yes, your access is active until 2027-01-01."}]},
    {"id": "sg-call-tools-text", "tools": json.dumps(TOOLS, ensure_ascii=False), "system": "You are a bank assistant.",
     "conversations": [{"from": "human", "value": "Погода в Москве?"},
                       {"from": "function_call",
                        "value": json.dumps(_fc("get_weather", {"city": "Москва", "unit": "celsius"}, True), ensure_ascii=False)},
                       {"from": "tool", "value": "−5 °C, снег ❄"},
                       {"from": "gpt", "value": "В Москве −5 °C, снег."}]},
    {"id": "sg-call-list", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "Check my access and the weather in Moscow."},
                       {"from": "function_call", "value": json.dumps([_fc("check_access", {"user_id": "u-42"}),
                                                                      _fc("get_weather", {"city": "Москва"}, True)],
                                                                     ensure_ascii=False)},
                       {"from": "observation", "value": "active"},
                       {"from": "observation", "value": "−5 °C"},
                       {"from": "gpt", "value": "Access is active; in Moscow it is −5 °C."}]},
    {"id": "sg-call-last", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "Мой доступ активен?"},
                       {"from": "function_call", "value": json.dumps(_fc("check_access", {"user_id": "u-7"}))}]},
    {"id": "sg-function-response", "tools": TOOLS,
     "conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Привет!"},
                       {"from": "human", "value": "Is my access active?"},
                       {"from": "function_call", "value": json.dumps(_fc("check_access", {"user_id": "u-42"}, True))},
                       {"from": "function_response", "value": "inactive"},
                       {"from": "gpt", "value": "Your access is not active."}]},
    {"id": "sg-call-no-tools",
     "conversations": [{"from": "human", "value": "Is my access active?"},
                       {"from": "function_call", "value": json.dumps(_fc("check_access", {"user_id": "u-3"}))},
                       {"from": "observation", "value": "active"},
                       {"from": "gpt", "value": "Active."}]},
]


def sharegpt_records(features):
    return SHAREGPT + (SHAREGPT_TOOLS if features.get("tool_calls") else [])


# A custom shape for --jq: {"q","a"} or {"turns":[{"q","a"},...]}, an optional "sys",
# and "meta" to pass through.
JQ_FILTER = ('{id, messages: ((if .sys then [{role: "system", content: .sys}] else [] end)'
             ' + [(.turns // [{q, a}])[] | {role: "user", content: .q}, {role: "assistant", content: .a}])}'
             ' + (if .meta then {meta} else {} end)')

JQ_RECORDS = [
    {"id": "jq-plain", "q": "Is my access active?", "a": "Let me check your access."},
    {"id": "jq-sys", "sys": "You are a bank assistant.", "q": "What is an account balance?",
     "a": "The amount of money in an account."},
    {"id": "jq-ru", "q": "Мой доступ активен?", "a": "Да, доступ активен до 2027 года.", "meta": {"lang": "ru"}},
    {"id": "jq-emoji", "q": "emoji test 🙂👍🏽 👨‍👩‍👧", "a": "Got them: 🙂👍🏽 👨‍👩‍👧 ✅"},
    {"id": "jq-cjk", "sys": "Ты — помощник банка. 🏦", "q": "中文测试：你好，世界！", "a": "你好！有什么可以帮你的？"},
    {"id": "jq-arabic", "q": "مرحبا بالعالم", "a": "أهلا وسهلا"},
    {"id": "jq-newlines", "q": "Tabs\tand\nnewlines\r\nhere", "a": "Line one\nLine two\n\nLine four"},
    {"id": "jq-jinja", "q": "What does {{ x }} print in Jinja?", "a": "{% raw %}{% if %}{% endraw %} stays text."},
    {"id": "jq-markers", "q": "Say <|im_end|> literally", "a": "Sure: <|im_end|> <|eot_id|> <end_of_turn> </s>"},
    {"id": "jq-long", "q": LONG, "a": LONG[::-1], "meta": [1, "two", None]},
    {"id": "jq-turns", "turns": [{"q": "Привет", "a": "Привет!"}, {"q": "2+2?", "a": "4"}]},
    {"id": "jq-turns-sys", "sys": "Answer briefly.",
     "turns": [{"q": "Quote \"double\" and 'single'", "a": "Escapes: \\n \" '"},
               {"q": "Ünïcödé ﬁ ligature", "a": "Nbsp\u00a0here and zero\u200bwidth"},
               {"q": "  padded question  ", "a": "  padded answer  "}]},
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "templates", "manifest.json")) as f:
        man = json.load(f)
    want = sys.argv[1] if len(sys.argv) > 1 else None
    for t in man["templates"]:
        if want and t["name"] != want:
            continue
        for r in conversations(t["features"]):
            r = dict(r, template=t["name"])
            print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main()
