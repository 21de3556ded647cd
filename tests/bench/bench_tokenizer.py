#!/usr/bin/env python3
"""bench_tokenizer.py: lib/tokenizer against Hugging Face tokenizers, single
threaded, on the same corpus, in one run (tests/bench/run calls it).

For Llama 3, Qwen2.5 and Gemma 3 (the fixtures; LORAPIPE_TOKENIZER_FIXTURES)
it checks first that our ids equal HF's on every record, then times encoding
the corpus (tests/ref/corpus/text.jsonl, each record separately, best of
several passes) with build/bench/bench_tokenizer and with HF's
Tokenizer.encode in a Python loop and encode_batch (RAYON_NUM_THREADS=1, so
one thread), and prints MB/s and the ratios ours/theirs.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "build", "bench", "bench_tokenizer")
CORPUS = os.path.join(ROOT, "tests", "ref", "corpus", "text.jsonl")
FIXTURES = os.environ.get("LORAPIPE_TOKENIZER_FIXTURES", "/work/shared/fixtures/tokenizers")
PASSES = int(os.environ.get("BENCH_PASSES", "5"))


def main():
    from tokenizers import Tokenizer
    texts = [json.loads(l)["text"] for l in open(CORPUS, encoding="utf-8")]
    nbytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts)} records, {nbytes / 1e6:.2f} MB; best of {PASSES} passes; one thread")
    tmp = tempfile.mkdtemp(prefix="lorapipe-bench-")
    try:
        for name in ("llama3", "qwen2_5", "gemma3"):
            src = os.path.join(FIXTURES, name, "tokenizer.json.zst")
            path = os.path.join(tmp, name + ".json")
            if os.path.exists(src):
                subprocess.run(["zstd", "-q", "-d", src, "-o", path], check=True)
            elif os.path.exists(src[:-4]):
                shutil.copy(src[:-4], path)
            else:
                print(f"{name}: fixture missing, skipped")
                continue
            ids_path = os.path.join(tmp, name + ".ids")
            r = subprocess.run([BENCH, path, CORPUS, str(PASSES), ids_path], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: bench_tokenizer failed: {r.stderr.strip()}")
                continue
            ours = json.loads(r.stdout)
            hf = Tokenizer.from_file(path)
            ours_ids = [[int(x) for x in l.split()] for l in open(ids_path)]
            bad = sum(1 for t, o in zip(texts, ours_ids) if hf.encode(t, add_special_tokens=False).ids != o)
            if bad or len(ours_ids) != len(texts):
                print(f"{name}: ids differ from HF on {bad} records: no ratio quoted")
                continue
            best_loop = best_batch = 1e30
            for _ in range(PASSES):
                t = time.perf_counter()
                for s in texts:
                    hf.encode(s, add_special_tokens=False)
                best_loop = min(best_loop, time.perf_counter() - t)
                t = time.perf_counter()
                hf.encode_batch(texts, add_special_tokens=False)
                best_batch = min(best_batch, time.perf_counter() - t)
            mbs = lambda s: nbytes / s / 1e6
            print(f"{name}: ids identical on {len(texts)} records; ours {mbs(ours['pass_s']):.1f} MB/s "
                  f"(load {ours['load_s']:.2f}s), HF encode {mbs(best_loop):.1f} MB/s, "
                  f"HF encode_batch(1 thread) {mbs(best_batch):.1f} MB/s; "
                  f"ours/theirs = {best_loop / ours['pass_s']:.1f}x (encode), {best_batch / ours['pass_s']:.1f}x (encode_batch)")
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
