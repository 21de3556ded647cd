"""Labels per chat template, checked by hand and against Hugging Face tokenizers.

For each fixture tokenizer, a two-turn conversation rendered by hand the way the
fixture's chat template renders it. The train spans are the assistant contents
plus the end-of-turn marker. Through `tok --jsonl`, the learned tokens decoded
by Hugging Face must be exactly those strings (written out here by hand), the
end-of-turn token must be learned, and the ids must equal HF's encoding.
"""
import json
import os
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))

Q1, A1 = "Is my access active?", "Let me check your access."
Q2, A2 = "Мой доступ активен? 🙂", "Да, доступ активен до 2027 года."

# (fixture, pieces, eot): pieces alternate (template text, learned text, ...);
# the learned pieces are written out in full so the expectation is checked by hand.
CASES = [
    ("qwen2_5", [
        "<|im_start|>system\nYou are a bank assistant.<|im_end|>\n<|im_start|>user\n" + Q1 + "<|im_end|>\n<|im_start|>assistant\n",
        "Let me check your access.<|im_end|>",
        "\n<|im_start|>user\n" + Q2 + "<|im_end|>\n<|im_start|>assistant\n",
        "Да, доступ активен до 2027 года.<|im_end|>",
        "\n"], "<|im_end|>"),
    ("qwen3", [
        "<|im_start|>user\n" + Q1 + "<|im_end|>\n<|im_start|>assistant\n",
        "Let me check your access.<|im_end|>",
        "\n<|im_start|>user\n" + Q2 + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "Да, доступ активен до 2027 года.<|im_end|>",
        "\n"], "<|im_end|>"),
    ("llama3", [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + Q1 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Let me check your access.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n" + Q2 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Да, доступ активен до 2027 года.<|eot_id|>",
        ""], "<|eot_id|>"),
    ("llama3_1", [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n" + Q1 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Let me check your access.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n" + Q2 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Да, доступ активен до 2027 года.<|eot_id|>",
        ""], "<|eot_id|>"),
    ("llama3_2", [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 23 Nov 2026\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n" + Q1 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Let me check your access.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n" + Q2 + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "Да, доступ активен до 2027 года.<|eot_id|>",
        ""], "<|eot_id|>"),
    ("gemma3", [
        "<bos><start_of_turn>user\nYou are a bank assistant.\n\n" + Q1 + "<end_of_turn>\n<start_of_turn>model\n",
        "Let me check your access.<end_of_turn>",
        "\n<start_of_turn>user\n" + Q2 + "<end_of_turn>\n<start_of_turn>model\n",
        "Да, доступ активен до 2027 года.<end_of_turn>",
        "\n"], "<end_of_turn>"),
    ("deepseek_v3", [
        "<｜begin▁of▁sentence｜>You are a bank assistant.<｜User｜>" + Q1 + "<｜Assistant｜>",
        "Let me check your access.<｜end▁of▁sentence｜>",
        "<｜User｜>" + Q2 + "<｜Assistant｜>",
        "Да, доступ активен до 2027 года.<｜end▁of▁sentence｜>",
        ""], "<｜end▁of▁sentence｜>"),
]


def report(ok, name, why=""):
    print(("ok - " if ok else "not ok - ") + name + ("" if ok else ": " + why), flush=True)
    return ok


def main():
    failed = False
    tmp = tempfile.mkdtemp()
    for name, pieces, eot in CASES:
        src = os.path.join(FIXTURES, "tokenizers", name, "tokenizer.json.zst")
        if not os.path.exists(src):
            print(f"skip - labels {name}: fixture not found at {src}")
            continue
        d = os.path.join(tmp, name)
        os.makedirs(d)
        subprocess.run(["zstd", "-q", "-d", src, "-o", os.path.join(d, "tokenizer.json")], check=True)
        text, spans, learned = "", [], []
        for i, p in enumerate(pieces):
            if i % 2 == 1:
                start = len(text.encode())
                spans.append([start, start + len(p.encode())])
                learned.append(p)
            text += p
        rec = json.dumps({"text": text, "train": spans}, ensure_ascii=False) + "\n"
        r = subprocess.run([os.path.join(ROOT, "bin", "tok"), "--model", d, "--jsonl", "--offsets"],
                           input=rec.encode(), capture_output=True)
        if r.returncode != 0:
            failed |= not report(False, f"labels {name}", r.stderr.decode(errors="replace"))
            continue
        out = json.loads(r.stdout)
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        want_ids = hf.encode(text, add_special_tokens=False).ids
        if out["ids"] != want_ids:
            failed |= not report(False, f"labels {name}", f"ids differ from HF: {out['ids'][:20]} vs {want_ids[:20]}")
            continue
        # Learned runs, split where the labels go back to -100.
        runs, cur = [], []
        for i, l in zip(out["ids"], out["labels"]):
            if l != -100:
                if l != i:
                    cur = None
                    break
                cur.append(i)
            elif cur:
                runs.append(cur)
                cur = []
        if cur is None:
            failed |= not report(False, f"labels {name}", "a label differs from its id")
            continue
        if cur:
            runs.append(cur)
        got = [hf.decode(run, skip_special_tokens=False) for run in runs]
        eot_id = hf.token_to_id(eot)
        ok = got == learned and all(run[-1] == eot_id for run in runs)
        failed |= not report(ok, f"labels {name}: learned = assistant content + {eot}",
                             f"learned {got!r}, expected {learned!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
