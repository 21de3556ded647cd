"""ds-gen against tests/ref/fault_server.py on loopback: every fault the issue
names, for each: no record lost, none duplicated, retries as configured, a
clear error for what cannot be retried, an exit status that says whether the
set is complete; SIGKILL at random points and a rerun that completes the set;
SIGINT; the key never shown; rate limits. Standard library only.
"""
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsgen_common import (DSGEN, ROOT, FaultServer, check, dsgen, env_without_key, finish, kill_at, lines_in,  # noqa: E402
                          notok, ok, read_jsonl, skip, wait_lines, write_requests)

SPEC = os.path.join(ROOT, "tests", "ref", "dsgen_test_spec.json")
FAST = ["--retry-base-ms", "5", "--retry-max-ms", "50"]


def batch_case(tmp, fault, name, extra=(), n=4, faulty=2, timeout=None):
    """n requests; each request's first `faulty` attempts get `fault`, then a good answer."""
    d = tempfile.mkdtemp(dir=tmp)
    inp, out, stats = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl"), os.path.join(d, "stats.json")
    write_requests(inp, n)
    with FaultServer(d, "--faults", ",".join([fault] * faulty)) as srv:
        args = ["--requests", inp, "--base-url", srv.url, "-o", out, "--stats", stats, "--retries", "3", "-j", "4",
                *FAST, *extra]
        if timeout:
            args += ["--timeout", str(timeout)]
        t0 = time.time()
        p = dsgen(*args)
        took = time.time() - t0
        log = srv.attempts()
    recs = read_jsonl(out)
    ids = [r.get("id") for r in recs]
    st = json.load(open(stats)) if os.path.exists(stats) else {}
    per_id = collections.Counter(a["id"] for a in log)
    want_ids = ["q%d" % i for i in range(n)]
    problems = []
    if p.returncode != 0:
        problems.append("exit %d: %s" % (p.returncode, p.stderr[-300:]))
    if sorted(ids) != sorted(want_ids):
        problems.append("ids %s" % ids)
    for r in recs:
        q = r["messages"][0]["content"]
        if r.get("response", {}).get("content") != "echo: " + q:
            problems.append("record %s carries the wrong answer %r" % (r.get("id"), r.get("response")))
    if st.get("retries") != n * faulty or st.get("complete") is not True:
        problems.append("stats %s" % {k: st.get(k) for k in ("retries", "complete", "requests")})
    if sorted(per_id.values()) != [faulty + 1] * n:
        problems.append("attempts per request %s, expected %d each" % (dict(per_id), faulty + 1))
    check("%s: %d records, none lost or duplicated, %d retries each" % (name, n, faulty), not problems,
          "; ".join(problems))
    return log, took


def fault_matrix(tmp):
    for fault, name in [("429", "429 without Retry-After"), ("500", "HTTP 500"), ("502", "HTTP 502"),
                        ("503", "HTTP 503"), ("drop", "connection dropped mid-body"),
                        ("malformed", "malformed JSON"), ("truncated", "truncated JSON"),
                        ("html", "wrong content type (text/html)"), ("nochoices", "JSON without choices")]:
        batch_case(tmp, fault, name)
    log, took = batch_case(tmp, "slow:1.5", "slow past the timeout", timeout=0.3, n=2, faulty=1)
    check("slow: the timeout cut the slow attempts", took < 1.4, "took %.2f s" % took)
    # Retry-After: the retry comes no sooner than the server asked, though the backoff is 5 ms
    log, took = batch_case(tmp, "429ra:1", "429 with Retry-After: 1", n=2, faulty=1)
    gaps = gaps_of(log)
    check("Retry-After: 1 honoured", gaps and min(gaps) >= 0.9, "gaps between attempts %s" % gaps)
    log, took = batch_case(tmp, "429ms:400", "429 with retry-after-ms: 400", n=2, faulty=1)
    gaps = gaps_of(log)
    check("retry-after-ms: 400 honoured", gaps and min(gaps) >= 0.35, "gaps between attempts %s" % gaps)


def gaps_of(log):
    by = collections.defaultdict(list)
    for a in log:
        by[a["id"]].append(a["t"])
    return [round(t[1] - t[0], 3) for t in by.values() if len(t) > 1]


def not_retryable(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out, rej = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl"), os.path.join(d, "rejects.jsonl")
    write_requests(inp, 3)
    with FaultServer(d, "--always", "400") as srv:
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "--rejects", rej, "--retries", "4", *FAST)
        log = srv.attempts()
    rejects = read_jsonl(rej)
    check("400 is not retried: one attempt each, exit 1, a clear error, each in --rejects",
          p.returncode == 1 and len(log) == 3 and "HTTP 400: injected 400" in p.stderr and "incomplete: 0 of 3" in p.stderr
          and not read_jsonl(out) and len(rejects) == 3 and all("HTTP 400" in r["reason"] for r in rejects),
          "exit %d, %d attempts, %d rejects, stderr %s" % (p.returncode, len(log), len(rejects), p.stderr[-400:]))


def out_of_retries_then_resume(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out, stats = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl"), os.path.join(d, "stats.json")
    write_requests(inp, 5)
    with FaultServer(d, "--faults", "ok,ok,ok,ok,ok") as good_first:
        pass  # (only to check a server starts and stops cleanly)
    # requests q0..q4; the server fails every attempt of q1 and q3 (by rule: --always for all) -> use two runs:
    with FaultServer(d, "--always", "503") as srv:
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "--stats", stats, "--retries", "2", *FAST)
        log = srv.attempts()
    st = json.load(open(stats))
    per = collections.Counter(a["id"] for a in log)
    check("503 every time: gives up after 1 + --retries attempts, exit 1, says incomplete",
          p.returncode == 1 and sorted(per.values()) == [3] * 5 and "gave up after 3 attempts: HTTP 503" in p.stderr
          and st["complete"] is False and st["failures"] == 5 and st["retries"] == 10 and not read_jsonl(out),
          "exit %d, attempts %s, stats %s, stderr %s" % (p.returncode, dict(per), st, p.stderr[-300:]))
    # half done, then the server heals: the rerun asks only what is missing
    with FaultServer(d) as srv:
        write_requests(os.path.join(d, "first2.jsonl"), 2)
        p1 = dsgen("--requests", os.path.join(d, "first2.jsonl"), "--base-url", srv.url, "-o", out, *FAST)
        p2 = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, *FAST)
        log = srv.attempts()
    recs = read_jsonl(out)
    ids = [r["id"] for r in recs]
    check("rerun after failures completes the set, asking only for the missing ids",
          p1.returncode == 0 and p2.returncode == 0 and sorted(ids) == ["q%d" % i for i in range(5)] and len(log) == 5,
          "exits %d %d, ids %s, %d attempts (expected 5)" % (p1.returncode, p2.returncode, ids, len(log)))


def secret_key(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out, rej, stats = (os.path.join(d, n) for n in ("in.jsonl", "out.jsonl", "rej.jsonl", "stats.json"))
    write_requests(inp, 6)
    key = "sk-test-SECRET-%d" % random.randrange(10**9)
    with FaultServer(d, "--always", "401") as srv:
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "--rejects", rej, "--stats", stats, "-j", "2",
                  *FAST, env=env_without_key(OPENAI_API_KEY=key))
        log = srv.attempts()
    seen = p.stdout + p.stderr + "".join(open(f).read() for f in (out, rej, stats) if os.path.exists(f))
    check("401 is fatal: the run stops at once with the server's message, exit 1",
          p.returncode == 1 and "HTTP 401" in p.stderr and "Incorrect API key" in p.stderr and len(log) <= 2,
          "exit %d, %d attempts, stderr %s" % (p.returncode, len(log), p.stderr[-300:]))
    check("the key is sent (Authorization) but never shown, even when the server echoes it",
          key not in seen and all(a["auth"] for a in log) and "***" in p.stderr,
          "key found in output" if key in seen else "auth %s, stderr %s" % ([a["auth"] for a in log], p.stderr[-200:]))
    kf = os.path.join(d, "key")
    with open(kf, "w") as f:
        f.write(key + "\n")
    with FaultServer(d) as srv:
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "--api-key-file", kf, *FAST)
        log = srv.attempts()
    check("--api-key-file: the key is sent, not shown",
          p.returncode == 0 and all(a["auth"] for a in log) and key not in p.stderr + open(out).read(),
          "exit %d, stderr %s" % (p.returncode, p.stderr[-300:]))


def spec_with_faults(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    out, rej, stats = (os.path.join(d, n) for n in ("pairs.jsonl", "rej.jsonl", "stats.json"))
    with FaultServer(d, "--mode", "gen", "--dup", "--wrap", "--faults", "503,malformed") as srv:
        p = dsgen("--spec", SPEC, "--base-url", srv.url, "-o", out, "--rejects", rej, "--stats", stats, "-j", "4",
                  *FAST)
    recs = read_jsonl(out)
    st = json.load(open(stats)) if os.path.exists(stats) else {}
    problems = spec_problems(recs, 24)
    want = {("intent", "check_access", "en"): 5, ("intent", "check_access", "ru"): 4,
            ("intent", "block_card", "en"): 4, ("intent", "block_card", "ru"): 5,
            ("negative", "small_talk", "en"): 3, ("negative", "small_talk", "ru"): 3}
    got = collections.Counter(("intent" if "intent" in r else "negative", r.get("intent") or r.get("negative"),
                               r["lang"]) for r in recs)
    if dict(got) != want:
        problems.append("balance %s, expected %s" % (dict(got), want))
    rejects = read_jsonl(rej)
    if not any(r["reason"] == "duplicate" for r in rejects):
        problems.append("the repeated utterance was never rejected as a duplicate")
    if p.returncode != 0 or st.get("retries", 0) < 2 * st.get("answered", 99):
        problems.append("exit %d, stats %s, stderr %s" % (p.returncode, st, p.stderr[-300:]))
    check("spec mode through 503 and malformed replies: 24 balanced, unique, valid conversations", not problems,
          "; ".join(problems))


def spec_problems(recs, n):
    """What is wrong with a spec-mode output of n records (empty when nothing)."""
    problems = []
    if len(recs) != n:
        problems.append("%d records, expected %d" % (len(recs), n))
    ids = [r.get("id") for r in recs]
    if len(set(ids)) != len(ids):
        problems.append("duplicate ids")
    texts = [" ".join(r["messages"][1]["content"].lower().split()) for r in recs]
    if len(set(texts)) != len(texts):
        problems.append("duplicate user texts")
    for r in recs:
        m = r["messages"]
        if m[0]["role"] != "system" or m[1]["role"] != "user" or m[2]["role"] != "assistant" or len(m) != 3:
            problems.append("bad shape %s" % m)
            break
        if "intent" in r:
            call = m[2]["tool_calls"][0]["function"]
            if call["name"] != r["intent"]:
                problems.append("tool %s for intent %s" % (call["name"], r["intent"]))
            if r["intent"] == "block_card" and len(call["arguments"].get("card_last4", "")) != 4:
                problems.append("block_card without a valid card_last4: %s" % call)
        elif not m[2]["content"].strip():
            problems.append("negative without an answer")
        if r["lang"] == "ru" and not any("\u0400" <= ch <= "\u04ff" for ch in m[1]["content"]):
            problems.append("a ru record without Cyrillic: %s" % m[1]["content"])
    return problems


def sigkill_spec(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    out = os.path.join(d, "pairs.jsonl")
    rng = random.Random(os.getpid())
    counts = []
    with FaultServer(d, "--mode", "gen", "--delay", "0.04") as srv:
        cmd = [DSGEN, "--spec", SPEC, "--base-url", srv.url, "-o", out, "-j", "2", "--per-request", "1", "-n", "30",
               *FAST, "-q"]
        for k in range(5):
            # the first at a random time (start-up included), the others a
            # random time after the run has written a line more than the last
            after = lines_in(out) + 1 if k else 0
            kill_at(cmd, rng.uniform(0.0, 0.12) if k else rng.uniform(0.05, 0.5), env_without_key(), out, after)
            n = len(open(out, encoding="utf-8").read().splitlines()) if os.path.exists(out) else 0
            counts.append(n)
            if k == 2 and os.path.exists(out):
                with open(out, "a", encoding="utf-8") as f:
                    f.write('{"id":"cut-short","messages":[{"role":"us')  # a crash in the middle of a write
        p = dsgen("--spec", SPEC, "--base-url", srv.url, "-o", out, "-j", "2", "--per-request", "1", "-n", "30", *FAST)
    try:
        recs = read_jsonl(out)
    except ValueError as e:
        recs = None
        notok("SIGKILL (spec)", "output is not valid JSON Lines after the rerun: %s" % e)
    if recs is not None:
        problems = spec_problems(recs, 30)
        if p.returncode != 0:
            problems.append("final run exit %d: %s" % (p.returncode, p.stderr[-300:]))
        if not any(0 < c < 30 for c in counts):
            problems.append("no kill landed mid-run (line counts after each kill: %s)" % counts)
        check("SIGKILL at random points x5 (spec), rerun: exactly 30 unique valid records (counts after kills %s)"
              % counts, not problems, "; ".join(problems))


def sigkill_batch(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
    write_requests(inp, 40, with_ids=False)
    rng = random.Random(os.getpid() + 1)
    counts = []
    with FaultServer(d, "--delay", "0.02", "--faults", "503") as srv:
        cmd = [DSGEN, "--requests", inp, "--base-url", srv.url, "-o", out, "-j", "2", *FAST, "-q"]
        for k in range(4):
            after = lines_in(out) + 1 if k else 0  # as in sigkill_spec
            kill_at(cmd, rng.uniform(0.0, 0.1) if k else rng.uniform(0.05, 0.4), env_without_key(), out, after)
            counts.append(len(read_jsonl(out)))
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "-j", "2", *FAST)
    recs = read_jsonl(out)
    ids = [r["id"] for r in recs]
    problems = []
    if p.returncode != 0:
        problems.append("final exit %d: %s" % (p.returncode, p.stderr[-300:]))
    if sorted(ids) != sorted("line:%d" % i for i in range(1, 41)):
        problems.append("ids %d, unique %d" % (len(ids), len(set(ids))))
    if any(r["response"]["content"] != "echo: " + r["messages"][0]["content"] for r in recs):
        problems.append("a record carries another request's answer")
    if not any(0 < c < 40 for c in counts):
        problems.append("no kill landed mid-run (counts %s)" % counts)
    check("SIGKILL at random points x4 (batch), rerun: exactly 40 unique records (counts after kills %s)" % counts,
          not problems, "; ".join(problems))


def sigint(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
    write_requests(inp, 20)
    with FaultServer(d, "--delay", "0.1") as srv:
        pr = subprocess.Popen([DSGEN, "--requests", inp, "--base-url", srv.url, "-o", out, "-j", "2", *FAST],
                              stderr=subprocess.PIPE, text=True, env=env_without_key())
        wait_lines(pr, out, 1)  # a line written, many left: the signal lands mid-run however slow the host
        time.sleep(0.05)
        pr.send_signal(signal.SIGINT)
        t0 = time.time()
        err = pr.communicate(timeout=10)[1]
        stop_s = time.time() - t0
        mid = read_jsonl(out)
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "-j", "4", *FAST)
    recs = read_jsonl(out)
    check("SIGINT: exit 130 within a second, every line whole, a rerun completes the set",
          pr.returncode == 130 and stop_s < 1.0 and 0 < len(mid) < 20 and "interrupted" in err and p.returncode == 0
          and sorted(r["id"] for r in recs) == sorted("q%d" % i for i in range(20)),
          "exit %s after %.2f s, %d lines then %d, stderr %s" % (pr.returncode, stop_s, len(mid), len(recs), err[-200:]))


def rate_limits(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    spans = {}
    for name, n, extra in [("none", 5, []), ("rpm", 5, ["--rpm", "120"]),
                           ("tpm", 4, ["--tpm", "1800", "--max-tokens", "100"])]:
        inp, out = os.path.join(d, name + ".in.jsonl"), os.path.join(d, name + ".jsonl")
        write_requests(inp, n)
        with FaultServer(d) as srv:
            p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "-j", "6", *extra)
            ts = sorted(a["t"] for a in srv.attempts())
        spans[name] = (p.returncode, round(ts[-1] - ts[0], 2), len(read_jsonl(out)) == n)
    # rpm 120 = 2/s with a bucket of 2: starts at 0, 0, 0.5, 1.0, 1.5 s. tpm 1800 = 30 tokens/s with a
    # bucket of 30; each request takes ~130 estimated and gives back all but the 18 it used when its
    # answer comes: from 30 the level is 12, -6, -18 after each answer, so the 3rd waits 0.2 s and the
    # 4th 0.6 s: >= 0.8 s from the first start to the last. The server times arrivals, and the first
    # one also waits for its connection: 0.1 s is left for that (a run under load measured 0.79 s).
    check("--rpm 120 spaces 5 requests over >= 1.4 s; --tpm 1800 4 over >= 0.7 s; without limits at once",
          spans["none"][1] < 0.4 and spans["rpm"][1] >= 1.4 and spans["tpm"][1] >= 0.7
          and all(s[0] == 0 and s[2] for s in spans.values()),
          "exit, span s, all records: %s" % spans)


def validate_filter(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    inp, out, rej = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl"), os.path.join(d, "rej.jsonl")
    write_requests(inp, 4)
    with FaultServer(d) as srv:
        p = dsgen("--requests", inp, "--base-url", srv.url, "-o", out, "--rejects", rej, "--item-retries", "1",
                  "--validate", '.tag % 2 == 0', *FAST)
        log = srv.attempts()
    recs, rejects = read_jsonl(out), read_jsonl(rej)
    check("--validate keeps what the filter accepts, asks again once (--item-retries 1), then counts the rest failed",
          p.returncode == 1 and sorted(r["id"] for r in recs) == ["q0", "q2"] and len(log) == 6 and len(rejects) == 4,
          "exit %d, ids %s, %d attempts, %d rejects; %s" % (p.returncode, [r["id"] for r in recs], len(log),
                                                              len(rejects), p.stderr[-200:]))


def main():
    if not os.access(DSGEN, os.X_OK):
        notok("ds-gen", "%s not built" % DSGEN)
        finish()
    tmp = tempfile.mkdtemp(prefix="dsgen-faults-")
    try:
        for case in (fault_matrix, not_retryable, out_of_retries_then_resume, secret_key, spec_with_faults,
                     sigkill_spec, sigkill_batch, sigint, rate_limits, validate_filter):
            try:
                case(tmp)
            except Exception as e:  # a case that crashes is a failure, not a silent pass
                notok(case.__name__, "%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
