#!/usr/bin/env python3
"""make_corpus.py: writes the tokenizer comparison corpus, deterministically.

    python3 tests/ref/make_corpus.py [OUTDIR]     (default tests/ref/corpus)

Writes two files:
  text.jsonl     one {"text": ...} per record (records may hold newlines)
  invalid.jsonl  one {"hex": ...} per record: raw bytes that are not valid
                 UTF-8 (the tokenizer cleans them; the test compares with
                 Hugging Face on bytes.decode("utf-8", "replace"))
The records are chosen to be hard for a tokenizer: many scripts, emoji and
ZWJ sequences, combining marks and NFC-sensitive text, code, long runs of
whitespace, numbers, contractions, every fixture's special-token strings (and
broken ones) inside text, very long words, invalid bytes.
"""
import json
import os
import random
import sys

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged that a single man in possession of a good fortune must be in want of a wife.",
    "Is my access active? What is an account balance?",
    "She said, \"I'll be there at 5 o'clock,\" but she wasn't.",
    "We're testing tokenizers: they're fiddly, aren't they? You'd think so; I've seen worse.",
    "THE END. The End. the end.",
    "e.g. i.e. etc. Mr. Smith vs. Mrs. Jones -- a long-standing dispute (1999-2024).",
    "Email: someone@example.com, URL: https://example.org/path?q=1&r=two#frag",
    "Prices rose 3.5% to $1,234,567.89 in Q3; see Fig. 4(b).",
    "HeLLo WoRLD, hELLO wORLD, HELLO WORLD!!!",
    "I'M SHOUTING BECAUSE IT'S LOUD. WE'LL SEE. THEY'VE GONE. HE'D KNOW.",
    "Don't you dare -- it's not what you'd expect; they'll say you're wrong.",
    "Tab\tseparated\tvalues\there.",
    "Line one\nLine two\r\nLine three\rLine four",
    "   leading spaces and trailing spaces   ",
    "A sentence with    many     internal      spaces.",
    "Ellipsis... and em-dash \u2014 and en-dash \u2013 and quotes \u201cnice\u201d \u2018single\u2019 it\u2019s.",
    "Hyphenated-words and under_scored_words and camelCaseWords and PascalCase.",
]
OTHER = [
    "Привет! Мой доступ активен? Сколько стоит подписка на 12 месяцев?",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我的账户余额是多少？今天天气很好，我们去公园散步吧。",
    "机器学习模型的训练需要大量的数据和计算资源。",
    "私のアカウントは有効ですか？カタカナとひらがなと漢字を混ぜた文章です。",
    "東京都渋谷区で会議があります。ｶﾀｶﾅ半角もあります。",
    "هل حسابي نشط؟ ما هو رصيد الحساب؟",
    "مرحبا بالعالم، هذا اختبار للنص العربي مع أرقام ١٢٣٤٥.",
    "क्या मेरा खाता सक्रिय है? नमस्ते दुनिया।",
    "हिन्दी में क़लम और ज़मीन लिखते हैं।",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "สวัสดีครับ นี่คือการทดสอบภาษาไทย",
    "Γειά σου Κόσμε! Ελληνικά κείμενα.",
    "שלום עולם, זה מבחן בעברית.",
    "Ελληνικό ερωτηματικό; και άνω τελεία·",
    "Tiếng Việt có dấu: Xin chào thế giới, mọi người khỏe không?",
    "Ça va? Très bien, merci. Garçon! Œuvre, naïve, façade.",
    "Größe, Straße, Fußgänger, ÄÖÜ äöü ß ẞ.",
    "İstanbul'da ılık bir gün; IĞDIR ve ığdır.",
    "Ꭰ Ꮳ ᏣᎳᎩ and ᚠᚢᚦᚨᚱᚲ runes and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters.",
]
EMOJI = [
    "🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵🇩🇪", "🇺🇸", "1️⃣", "#️⃣", "❤️", "🫠", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
    "😀😃😄😁", "🤖🦾", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "☺︎", "✌🏻",
]
COMBINING = [
    "e\u0301", "E\u0301\u0323", "a\u0308\u0301", "o\u0323\u0302", "A\u030a", "\u212b", "\u2126",
    "n\u0303a\u0303", "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u0915\u093c", "\u0958",
    "q\u0307\u0323", "x\u0301\u0301\u0301", "\u0301leading mark", "s\u0323\u0307", "\ufb01 \ufb02 \ufb03",
    "\uff21\uff22\uff23 \uff11\uff12\uff13", "\u00bd \u00b2 \u00b3 \u2167 \u216b", "\u017f\u0307",
    "\u0130 \u0131 \u01c5 \u01c6", "Kelvin \u212a", "caf\u00e9 vs cafe\u0301", "\u0041\u0327\u0301",
    "\u05e9\u05c1\u05b8", "\u0e01\u0e34\u0e4a", "\u00c5\u030a", "\u1e9b\u0323",
]
CODE = [
    "#include <stdio.h>\n\nint main(void)\n{\n\tprintf(\"hello, world\\n\");\n\treturn 0;\n}\n",
    "static int f(const char *s, size_t n) {\n    for (size_t i = 0; i < n; i++) if (s[i] == '\\0') return -1;\n    return 0;\n}",
    "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "class Foo(Bar):\n\tdef __init__(self, x: int = 42) -> None:\n\t\tself.x = x  # it's fine\n",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Is my access active?\"}], \"tools\": []}",
    "{\n  \"name\": \"check_access\",\n  \"arguments\": {\"user_id\": 12345, \"verbose\": true, \"ratio\": 0.75}\n}",
    "SELECT id, name FROM users WHERE created_at >= '2024-01-01' ORDER BY id DESC LIMIT 10;",
    "x = [i**2 for i in range(10) if i % 3 != 0]; y = {k: v for k, v in zip('abc', (1, 2, 3))}",
    "if (a && b || !c) { x += 1; } else if (x >= 0x7fffffff) { y <<= 2; }",
    "<html><body><div class=\"x\">Hello &amp; goodbye</div></body></html>",
    "$ echo \"$HOME\" | grep -E '^/home/[a-z]+$' && ls -la ~/.config",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * 2).collect(); println!(\"{:?}\", v); }",
]
SPACES = [
    " ", "  ", "   ", "    ", "        ", "\t", "\t\t", "\t\t\t\t", "\n", "\n\n", "\n\n\n", "\n\n\n\n\n\n\n\n",
    "\r\n", "\r\n\r\n", " \n", "\n ", " \n \n ", "\t\n\t", "\u00a0", "\u00a0\u00a0", "\u3000", "\u2028", "\u2029",
    "\u0085", "\u180e", "\u200b", "\u2003\u2009", "\u000b", "\u000c", " \t \t ", "\r", "\x1c\x1d\x1e\x1f",
]
SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_5|>", "<|finetune_right_pad_id|>",
    "<|python_tag|>", "<|eom_id|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>",
    "<mask>", "[multimodal]", "<unused12>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    "<table>", "</td>", "<h1>", "</h3>", "<blockquote>", "\u2581\u2581", "\u2581\u2581\u2581\u2581",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<\uff5cUser\uff5c>",
    "<\uff5cAssistant\uff5c>", "<\uff5ctool\u2581call\u2581begin\uff5c>", "<\uff5ctool\u2581sep\uff5c>",
    "<|EOT|>", "<\uff5cfim\u2581hole\uff5c>", "<tool_call>", "</tool_call>", "<think>", "</think>",
    "<tool_response>", "</tool_response>", "<|fim_prefix|>", "<|fim_middle|>", "<|file_sep|>",
    "<|vision_start|>", "<|object_ref_start|>", "<|box_end|>",
]
PARTIAL = [
    "<|im_sta", "<|im_start", "im_start|>", "<start_of_tur", "<end_of_turn", "<|eot_id", "<|begin_of_text",
    "<\uff5cUser", "\uff5c>", "|>", "<|", "<", ">", "<|im_start|im_end|>", "<<|im_start|>>", "<bos", "bos>",
    "<|reserved_special_token_", "<unused", "<think", "</think", "<tool_call", "<|EOT", "[multimodal",
]
CONTRACTIONS = [
    "it's", "IT'S", "you're", "YOU'RE", "we'll", "WE'LL", "We'Ll", "I'd", "I'D", "they've", "THEY'VE", "I'm",
    "I'M", "can't", "CAN'T", "'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'d", "'LL", "'D", "'x",
    "it\u2019s", "John's", "Jones'", "'\u017f", "'\u0130", "rock'n'roll", "''", "'''s",
]
WORDS = [
    "access", "account", "balance", "tokenizer", "pipeline", "adapter", "training", "gradient", "the", "and",
    "is", "a", "an", "of", "to", "in", "internationalization", "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "LoRA", "QLoRA", "NF4", "bf16", "GGUF", "llama.cpp",
    "Hugging", "Face", "über", "naïve", "résumé", "日本", "中文", "мир", "данные",
]


def number(rng):
    k = rng.random()
    if k < 0.4:
        return str(rng.randrange(10 ** rng.randrange(1, 12)))
    if k < 0.6:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 60)))
    if k < 0.7:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 8)}f}"
    if k < 0.8:
        return f"{rng.randrange(10 ** 9):,}"
    if k < 0.85:
        return "+1 (555) 123-4567"
    if k < 0.9:
        return "".join(rng.choice("٠١٢٣٤٥٦٧٨٩") for _ in range(rng.randrange(1, 8)))
    if k < 0.95:
        return "".join(rng.choice("０１２３４５６７８９") for _ in range(rng.randrange(1, 8)))
    return rng.choice(["1e-9", "0x1F", "3.14159", "2^64", "1/2", "10%", "v1.2.3", "2024-06-30T12:00:00Z"])


def long_word(rng):
    k = rng.random()
    if k < 0.2:
        return rng.choice("abcxyz") * rng.randrange(50, 700)
    if k < 0.4:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randrange(40, 400)))
    if k < 0.55:
        return "supercalifragilistic" * rng.randrange(5, 40)
    if k < 0.7:
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(rng.randrange(64, 600))) + "=="
    if k < 0.8:
        return "https://example.com/" + "/".join(rng.choice(WORDS) for _ in range(30)) + "?x=" + "1" * 50
    if k < 0.9:
        return "中" * rng.randrange(20, 300)
    return "д" * rng.randrange(20, 300)


def fragment(rng):
    k = rng.randrange(14)
    if k == 0:
        return rng.choice(ENGLISH)
    if k == 1:
        return rng.choice(OTHER)
    if k == 2:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 5)))
    if k == 3:
        return rng.choice(COMBINING)
    if k == 4:
        return rng.choice(CODE)
    if k == 5:
        return rng.choice(SPACES) * rng.randrange(1, 4)
    if k == 6:
        return rng.choice(SPECIAL)
    if k == 7:
        return rng.choice(PARTIAL)
    if k == 8:
        return rng.choice(CONTRACTIONS)
    if k == 9:
        return number(rng)
    if k == 10:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 8)))
    if k == 11:
        return rng.choice(SPACES) + rng.choice(SPECIAL) + rng.choice(SPACES)
    if k == 12:
        return long_word(rng) if rng.random() < 0.3 else rng.choice(WORDS)
    return rng.choice(ENGLISH).upper() if rng.random() < 0.5 else rng.choice(ENGLISH).lower()


def chat(rng):
    user = rng.choice(ENGLISH + OTHER)
    answer = rng.choice(ENGLISH + OTHER)
    forms = [
        f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n",
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{answer}<|eot_id|>",
        f"<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{answer}<end_of_turn>\n",
        f"<\uff5cbegin\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>{user}<\uff5cAssistant\uff5c>{answer}<\uff5cend\u2581of\u2581sentence\uff5c>",
        f"<|im_start|>assistant\n<tool_call>\n{{\"name\": \"check_access\", \"arguments\": {{}}}}\n</tool_call><|im_end|>",
        f"<|im_start|>assistant\n<think>\n{user}\n</think>\n\n{answer}<|im_end|>",
    ]
    return rng.choice(forms)


def text_records():
    rng = random.Random(20240611)
    recs = []
    # every fixed fragment on its own, then with spaces around
    for group in (ENGLISH, OTHER, EMOJI, COMBINING, CODE, SPACES, SPECIAL, PARTIAL, CONTRACTIONS, WORDS):
        for s in group:
            recs.append(s)
            recs.append(" " + s + " ")
    for s in SPECIAL:
        recs.append("a" + s + "b")
        recs.append("\n" + s + "\n\n")
        recs.append(s + s)
        recs.append("Hello " + s + " world " + s)
    for n in range(1, 41):
        recs.append("".join(str((i * 7 + n) % 10) for i in range(n)))
    for n in range(1, 33):
        recs.append(" " * n + "x" + " " * n)
        recs.append("\n" * n)
        recs.append("\t" * n + "y")
    recs.append("")
    recs.append(" ")
    recs.append("a")
    for _ in range(150):
        recs.append(chat(rng))
    for _ in range(60):
        recs.append(long_word(rng))
    while len(recs) < 2400:
        parts = [fragment(rng) for _ in range(rng.randrange(1, 9))]
        sep = rng.choice(["", " ", "", "\n", " ", "  "])
        recs.append(sep.join(parts))
    return recs


BAD_BYTES = [
    b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xc2", b"\xe2\x82", b"\xe2", b"\xf0\x9f\x98", b"\xf0\x9f",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe\xff",
    b"\xe0\x80\x80", b"\xf0\x80\x80\x80", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc",
]


def invalid_records():
    rng = random.Random(7)
    recs = []
    for b in BAD_BYTES:
        recs.append(b)
        recs.append(b"abc" + b + b"def")
        recs.append(b" " + b + b" ")
        recs.append(b + b"<|im_start|>" + b)
        recs.append("Привет".encode() + b + "中文".encode())
    for _ in range(220):
        parts = []
        for _ in range(rng.randrange(1, 8)):
            k = rng.random()
            if k < 0.35:
                parts.append(rng.choice(BAD_BYTES))
            elif k < 0.5:
                parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))))
            else:
                parts.append(fragment(rng).encode())
        recs.append(b"".join(parts))
    out = []
    for r in recs:
        try:
            r.decode("utf-8")
        except UnicodeDecodeError:
            out.append(r)
    return out


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "text.jsonl"), "w", encoding="utf-8") as f:
        for t in text_records():
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    with open(os.path.join(outdir, "invalid.jsonl"), "w", encoding="ascii") as f:
        for b in invalid_records():
            f.write(json.dumps({"hex": b.hex()}) + "\n")


if __name__ == "__main__":
    main()
