"""tok end to end: format-2 JSON Lines in, zstd token stream out, in MB/s of text.

The reference in the same run is Hugging Face tokenizers encoding the same texts
on one thread (encoding alone, no JSON, no labels, no compression), so the ratio
is a lower bound of tok's advantage over the equivalent Python step.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
TARGET_MB = float(os.environ.get("BENCH_TOK_MB", "32"))


def main():
    tmp = tempfile.mkdtemp()
    texts = [json.loads(l)["text"] for l in open(os.path.join(ROOT, "tests/ref/corpus/text.jsonl"), encoding="utf-8")]
    inp = os.path.join(tmp, "text.jsonl")
    size = 0
    with open(inp, "w", encoding="utf-8") as f:
        while size < TARGET_MB * 1e6:
            for t in texts:
                b = len(t.encode())
                if b == 0:
                    continue
                f.write(json.dumps({"text": t, "train": [[0, b]]}, ensure_ascii=False) + "\n")
                size += b
    print(f"input: {size / 1e6:.1f} MB of text in {inp}")
    for name in ("llama3", "qwen2_5", "gemma3"):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        subprocess.run(["zstd", "-q", "-d", os.path.join(FIXTURES, "tokenizers", name, "tokenizer.json.zst"),
                        "-o", os.path.join(d, "tokenizer.json")], check=True)
        out = os.path.join(tmp, name + ".tok.zst")
        t0 = time.perf_counter()
        subprocess.run([os.path.join(ROOT, "bin/tok"), "--model", d, "-q", "--drop-empty", "-o", out, inp], check=True)
        ours = time.perf_counter() - t0
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        all_texts = [json.loads(l)["text"] for l in open(inp, encoding="utf-8")]
        t0 = time.perf_counter()
        for t in all_texts:
            hf.encode(t, add_special_tokens=False)
        theirs = time.perf_counter() - t0
        print(f"{name:8s} tok end to end {size / 1e6 / ours:7.2f} MB/s ({ours:.2f} s, stream {os.path.getsize(out) / 1e6:.1f} MB)"
              f"   HF encode alone {size / 1e6 / theirs:6.2f} MB/s   time ratio tok/HF {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
