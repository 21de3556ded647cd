#!/usr/bin/env bash
# tests/ref/venv.sh — makes (once) the Python environment of the reference
# implementations from tests/ref/requirements.txt and prints its path.
# It lives outside the checkout, keyed by the requirements' hash, so a second
# run (and CI on the same machine) reuses it: $LORAPIPE_CACHE, by default
# /var/cache/lorapipe when writable, else ~/.cache/lorapipe.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${LORAPIPE_CACHE:-}
if [ -z "$cache" ]; then
	if mkdir -p /var/cache/lorapipe 2>/dev/null && [ -w /var/cache/lorapipe ]; then
		cache=/var/cache/lorapipe
	else
		cache=$HOME/.cache/lorapipe
	fi
fi
req=$here/requirements.txt
hash=$(cat "$req" | sha256sum | cut -c1-12)
venv=$cache/venv-$hash
if [ ! -f "$venv/.complete" ]; then
	mkdir -p "$cache"
	echo "tests/ref/venv.sh: creating $venv (the first time takes several minutes: llama-cpp-python builds from source)" >&2
	rm -rf "$venv"
	python3 -m venv "$venv" >&2
	# llama.cpp for any x86-64 machine, not only this one's processor.
	CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" PIP_CACHE_DIR=$cache/pip \
		"$venv/bin/pip" install --disable-pip-version-check -q -r "$req" >&2
	touch "$venv/.complete"
fi
echo "$venv"
