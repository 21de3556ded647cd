"""ds-fmt against transformers' apply_chat_template: records per second, same
conversations and template, same run, printed as a ratio (target: ds-fmt >= 50x).

The conversations are tests/ref/make_conversations.py's for each template (those
both transformers and ds-fmt accept), repeated to BENCH_DSFMT_RECORDS records (default 20000).
ds-fmt runs as one process over the whole file (start-up included, its output
written to /dev/null: transformers' side writes nothing either, and on a slow
disk the write would be most of the time; one more line times it writing a
file, for scale); transformers renders the same records one apply_chat_template call each
(tokenize=False, the template compiled once and cached by transformers, as a
training script does), text only — no spans, no JSON — so the ratio is a lower
bound of ds-fmt's advantage. A second ratio is against the same work done in
Python: each line parsed (json.loads), rendered, rendered again up to each
assistant turn with the generation prompt (where the learned bytes start, as
ds-fmt finds them) and written (json.dumps) — what a script producing ds-fmt's
output with transformers has to do. With qwen2_5 a second set is timed:
examples/bank/train.jsonl, the pipeline's own data, whose records all carry the
same four tools (as ds-gen writes them), and conversations of 20 turns, where
one prefix render per learned turn makes ds-fmt's work grow with the square
of the number of turns. Also printed: ds-fmt's start-up (one record: the
template, tokenizer_config.json and tokenizer.json's added tokens) and the rate
without it. ds-fmt formats records on one worker thread per CPU it may run on
(at most 16; the output is the same for any count); transformers uses one.
A third line times ds-fmt with --threads 1: the ratio per thread, from which
a machine with more cores can be judged; the last, ds-fmt reading its input
from a pipe, as in a shell pipeline. Each time is the best of
BENCH_DSFMT_REPEAT runs (default 3), ds-fmt's and Python's alike: on a shared
host the best run is the one least disturbed.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
import dsfmt_common as C  # noqa: E402
from make_conversations import conversations  # noqa: E402

N = int(os.environ.get("BENCH_DSFMT_RECORDS", "20000"))
REPEAT = max(int(os.environ.get("BENCH_DSFMT_REPEAT", "3")), 1)
BANK = os.path.join(ROOT, "examples", "bank", "train.jsonl")
TEMPLATES = os.environ.get("BENCH_DSFMT_TEMPLATES", "qwen2_5,llama3_2,gemma3,mistral_nemo,smollm2").split(",")


def long_conversations(turns, count):
    """count conversations of a system prompt and turns user/assistant pairs."""
    out = []
    for i in range(count):
        m = [{"role": "system", "content": "You are the assistant of Example Bank."}]
        for k in range(turns):
            m.append({"role": "user", "content": f"Question {k} of conversation {i}: the balance of account {k * 7 + i}?"})
            m.append({"role": "assistant", "content": f"Answer {k}: account {k * 7 + i} holds {k * 13 + i} euros."})
        out.append({"id": i, "messages": m})
    return out


def best(fn):
    """The shortest of REPEAT timings of fn() and its last result."""
    times, res = [], None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return min(times), res


def measure(t, label, base, tmp, n=None):
    """Times ds-fmt and transformers on base (what both accept) repeated to n records (default N)."""
    N = n or globals()["N"]
    name = label.replace(" ", "-")
    # only what ds-fmt accepts too (it refuses records with nothing to learn, empty content ...)
    probe = os.path.join(tmp, name + ".probe.jsonl")
    with open(probe, "w", encoding="utf-8") as f:
        for r in base:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    p = subprocess.run(t.dsfmt_cmd("--skip-bad", probe), capture_output=True)
    took = {json.loads(x).get("id") for x in C.output_lines(p.stdout)}
    base = [r for r in base if r["id"] in took]
    if not base:
        print(f"{label:14s} ds-fmt accepts none of the conversations ({p.returncode}): {p.stderr.decode(errors='replace')[:200]}")
        return
    recs = [dict(base[i % len(base)], id=i) for i in range(N)]
    inp = os.path.join(tmp, name + ".jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = os.path.join(tmp, name + ".out.jsonl")
    ours, p = best(lambda: subprocess.run(t.dsfmt_cmd("-o", os.devnull, inp), capture_output=True))
    if p.returncode != 0:
        print(f"{label:14s} ds-fmt failed ({p.returncode}): {p.stderr.decode(errors='replace')[:300]}")
        return
    to_file, _ = best(lambda: subprocess.run(t.dsfmt_cmd("-o", out, inp), capture_output=True))
    # the input through a pipe, as in a shell pipeline (cat runs alongside)
    piped_cmd = "cat " + shlex.quote(inp) + " | " + shlex.join(t.dsfmt_cmd("-o", os.devnull))
    piped, _ = best(lambda: subprocess.run(piped_cmd, shell=True, capture_output=True))
    one = os.path.join(tmp, name + ".one.jsonl")
    with open(one, "w", encoding="utf-8") as f:
        f.write(json.dumps(recs[0], ensure_ascii=False) + "\n")
    startup, _ = best(lambda: subprocess.run(t.dsfmt_cmd("-o", os.devnull, one), capture_output=True))
    # one worker thread: the same number of cores as transformers
    ours1, _ = best(lambda: subprocess.run(t.dsfmt_cmd("--threads", "1", "-o", os.devnull, inp), capture_output=True))
    msgs = [(t.normalize(r["messages"]), r.get("tools")) for r in recs]
    t.hf.apply_chat_template(msgs[0][0], tools=msgs[0][1], tokenize=False)  # compile once

    def render_all():
        for m, tools in msgs:
            t.hf.apply_chat_template(m, tools=tools, tokenize=False)
    theirs, _ = best(render_all)
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]

    def same_work_all():
        for line in lines:
            r = json.loads(line)
            m = t.normalize(r["messages"])
            tools = r.get("tools")
            text = t.hf.apply_chat_template(m, tools=tools, tokenize=False)
            starts = []
            for k, x in enumerate(m):
                if x.get("role") == "assistant":
                    try:  # as ds-fmt: a prefix the template refuses leaves the start unknown
                        starts.append(len(t.hf.apply_chat_template(m[:k], tools=tools, tokenize=False,
                                                                   add_generation_prompt=True)))
                    except Exception:
                        starts.append(-1)
            json.dumps({"text": text, "train": starts, "id": r.get("id")}, ensure_ascii=False)
    same_work, _ = best(same_work_all)
    print(f"{label:14s} ds-fmt {N / ours:10.0f} records/s ({ours:.2f} s)   "
          f"apply_chat_template {N / theirs:8.0f} records/s ({theirs:.2f} s)   "
          f"ratio {theirs / ours:6.1f}x (target >= 50x)   "
          f"[ds-fmt start-up {startup:.2f} s; without it {N / max(ours - startup, 1e-9):.0f} records/s, "
          f"ratio {theirs / max(ours - startup, 1e-9):.1f}x]", flush=True)
    print(f"{'':14s} the same work in Python (json.loads, render, a render per learned turn, json.dumps) "
          f"{N / same_work:8.0f} records/s ({same_work:.2f} s)   ratio {same_work / ours:6.1f}x", flush=True)
    print(f"{'':14s} ds-fmt --threads 1 {N / ours1:8.0f} records/s ({ours1:.2f} s)   "
          f"ratio per thread {theirs / ours1:6.1f}x (same work {same_work / ours1:.1f}x)", flush=True)
    print(f"{'':14s} ds-fmt writing its output to a file in {tmp} {N / to_file:8.0f} records/s ({to_file:.2f} s, "
          f"{os.path.getsize(out) / 1e6:.0f} MB)", flush=True)
    print(f"{'':14s} ds-fmt reading a pipe (cat FILE | ds-fmt) {N / piped:8.0f} records/s ({piped:.2f} s)   "
          f"ratio {theirs / piped:6.1f}x", flush=True)


def main():
    if not os.access(C.DSFMT, os.X_OK):
        print(f"bench_dsfmt: {C.DSFMT} not built")
        return 0
    threads = min(len(os.sched_getaffinity(0)), 16)  # as ds-fmt counts them
    print(f"threads: ds-fmt {threads} (one per CPU available), apply_chat_template 1; best of {REPEAT} runs each")
    tmp = tempfile.mkdtemp(prefix="bench-dsfmt-")
    for entry in C.manifest():
        if entry["name"] not in TEMPLATES:
            continue
        t = C.Template(entry, tmp)
        if t.skip:
            print(f"{t.name:14s} skipped: {t.skip}")
            continue
        base = [r for r in conversations(t.features) if t.render(r["messages"], r.get("tools"))[0] == "ok"]
        measure(t, t.name, base, tmp)
        if t.name == "qwen2_5":  # the pipeline's own data: every record carries the same four tools
            with open(BANK, encoding="utf-8") as f:
                bank = [json.loads(x) for x in f if x.strip()]
            measure(t, "qwen2_5 bank", bank, tmp)
            # long conversations, every turn learned: one prefix render per turn makes ds-fmt's
            # work grow with the square of the turns (--train-turns last avoids it)
            measure(t, "qwen2_5 20 turns", long_conversations(20, 50), tmp, max(N // 10, 1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
