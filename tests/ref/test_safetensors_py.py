"""Our safetensors reader and writer (lib/safetensors.c) against the Python
safetensors library (0.8, Rust inside) and transformers' sharded save.

Our side runs through tests/ref/safetensors_driver.c. Cases:

  numpy / torch   safetensors.numpy.save_file and safetensors.torch.save_file
                  write random tensors of every dtype both they and we support
                  (numpy: F64 F32 F16 I64 U64 I32 U32 I16 U16 I8 U8 BOOL; torch
                  adds BF16, F8_E4M3, F8_E5M2), shapes including a scalar,
                  zero-size dimensions and 8 dimensions, specials (inf, nan,
                  -0, subnormals) in the float ones, and metadata. We must list
                  the same names (sorted), dtypes, shapes and bytes, and our
                  fp32 conversion must equal numpy's / torch's .float() bit for
                  bit. Then our writer rewrites the file: it must be
                  byte-identical to Python's, and Python must load it back.
  broken          hand-made files the Rust library refuses (a hole, an overlap,
                  bytes after the last tensor, a size that does not match the
                  shape, a header longer than the file): we refuse each too;
                  files it accepts (zero-size tensors at a boundary, entries
                  in any order, spaces around the JSON) we accept.
  sharded         a tiny random Llama saved by transformers' save_pretrained
                  with a small max_shard_size: the folder (index + shards) opens
                  as one name space equal to the union of the shards.
Seed: $TEST_SEED (default 1234), printed on failure.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = int(os.environ.get("TEST_SEED", "1234"))


def say(line):
    print(line, flush=True)


def build_driver():
    subprocess.run(["make", "-s", "-j1", "build/ref/safetensors_driver"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return os.path.join(ROOT, "build", "ref", "safetensors_driver")


def driver_list(driver, path, outdir, keys=()):
    """Our view of path: [(entry, raw bytes, f32 bytes or None)], {key: value}."""
    p = subprocess.run([driver, "list", path, outdir, "--meta", *keys], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip())
    rows, meta = [], {}
    for line in p.stdout.splitlines():
        r = json.loads(line)
        if "meta" in r:
            meta = r["meta"]
            continue
        raw = open(os.path.join(outdir, f"{r['i']}.raw"), "rb").read()
        f = os.path.join(outdir, f"{r['i']}.f32")
        rows.append((r, raw, open(f, "rb").read() if os.path.exists(f) else None))
    return rows, meta


def header_keys(path):
    """__metadata__ keys in the order the file has them (Rust writes a HashMap: any order)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n), object_pairs_hook=lambda kv: kv)
    for k, v in h:
        if k == "__metadata__":
            return [mk for mk, _ in v]
    return None


def random_shapes(rng, n):
    fixed = [(), (0,), (3, 0, 2), (1, 2, 1, 2, 1, 2, 1, 2), (5,)]
    out = list(fixed)
    while len(out) < n:
        out.append(tuple(int(x) for x in rng.integers(1, 6, size=int(rng.integers(1, 4)))))
    return out


def float_values(np, rng, n, dtype):
    v = rng.standard_normal(n).astype(np.float64) * 3
    specials = [np.inf, -np.inf, np.nan, -0.0, 1e-40, 6e-8, 70000.0, 1e-310]
    k = min(n, len(specials))
    v[:k] = specials[:k]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return v.astype(dtype)


def compare(label, ours, ref, meta_ours, meta_ref):
    """ref: {name: (dtype str, shape tuple, raw bytes, f32 bytes or None)}. Returns a list of problems."""
    bad = []
    names = [r["name"] for r, _, _ in ours]
    if names != sorted(ref, key=lambda s: s.encode()):
        bad.append(f"names {names} != {sorted(ref)}")
    for r, raw, f32 in ours:
        want = ref.get(r["name"])
        if want is None:
            continue
        dt, shape, wraw, wf32 = want
        if r["dtype"] != dt or tuple(r["shape"]) != tuple(shape):
            bad.append(f"{r['name']}: {r['dtype']} {r['shape']} != {dt} {list(shape)}")
        if raw != wraw:
            bad.append(f"{r['name']}: raw bytes differ ({len(raw)} vs {len(wraw)})")
        if wf32 is not None and f32 != wf32:
            bad.append(f"{r['name']}: fp32 values differ")
        if wf32 is None and f32 is not None:
            bad.append(f"{r['name']}: converted a non-float dtype")
    if meta_ours != meta_ref:
        bad.append(f"metadata {meta_ours} != {meta_ref}")
    return bad


def roundtrip_case(label, driver, tmp, path, ref, meta, load_back):
    """Our reading of Python's file, then our rewrite of it: byte-identical and loadable."""
    fails = 0
    out = os.path.join(tmp, label)
    os.makedirs(out, exist_ok=True)
    keys = header_keys(path)
    try:
        ours, m = driver_list(driver, path, out, keys or [])
        bad = compare(label, ours, ref, m, meta or {})
    except RuntimeError as e:
        bad = [f"our reader refused it: {e}"]
    if bad:
        fails += 1
        say(f"not ok - {label} read (seed {SEED}): " + "; ".join(bad[:5]))
    else:
        say(f"ok - {label} read: {len(ref)} tensors, names, dtypes, shapes, bytes and fp32 values equal")
    ourfile = os.path.join(tmp, label + ".ours.safetensors")
    args = [driver, "copy", path, ourfile] + (["--meta", *keys] if keys is not None else [])
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        say(f"not ok - {label} write: our writer failed: {p.stderr.strip()}")
        return fails + 1
    a, b = open(path, "rb").read(), open(ourfile, "rb").read()
    if a != b:
        at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        say(f"not ok - {label} write (seed {SEED}): differs from Python's file at byte {at} "
            f"(sizes {len(a)}, {len(b)}): ours {b[max(0, at - 20):at + 40]!r} theirs {a[max(0, at - 20):at + 40]!r}")
        fails += 1
    else:
        say(f"ok - {label} write: byte-identical to Python's file ({len(a)} bytes, {len(keys or [])} metadata keys)")
    try:
        err = load_back(ourfile)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        err = f"Python cannot load it: {e}"
    if err:
        say(f"not ok - {label} load ours: {err}")
        fails += 1
    else:
        say(f"ok - {label} load ours: Python loads our file with equal tensors and metadata")
    return fails


def numpy_case(driver, tmp, np, rng):
    from safetensors.numpy import save_file, load_file
    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
              "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
              "U8": np.uint8, "BOOL": np.bool_}
    shapes = random_shapes(rng, 2 * len(dtypes))
    tensors, ref = {}, {}
    for i, shape in enumerate(shapes):
        name = list(dtypes)[i % len(dtypes)]
        dt = dtypes[name]
        n = int(np.prod(shape, dtype=np.int64))
        if name.startswith("F"):
            a = float_values(np, rng, n, dt)
        elif name == "BOOL":
            a = rng.integers(0, 2, size=n).astype(np.bool_)
        else:
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, size=n, dtype=dt, endpoint=True)
        a = a.reshape(shape)
        key = f"layer.{i % 3}.{name.lower()}.w{i}"
        tensors[key] = a
        f32 = a.astype(np.float32).tobytes() if name.startswith("F") else None
        ref[key] = (name, shape, a.tobytes(), f32)
    meta = {"format": "np", "note": "é \"quoted\" \\ \n tab\t", "z": ""}
    path = os.path.join(tmp, "numpy.safetensors")
    save_file(tensors, path, metadata=meta)

    def load_back(p):
        got = load_file(p)
        for k, a in tensors.items():
            if k not in got or got[k].dtype != a.dtype or got[k].shape != a.shape or got[k].tobytes() != a.tobytes():
                return f"tensor {k} differs"
        return None
    fails = roundtrip_case("numpy", driver, tmp, path, ref, meta, load_back)
    # one metadata key, and none: the files Python writes are then fully deterministic
    for label, m in (("numpy-one-key", {"format": "np"}), ("numpy-no-meta", None)):
        few = {k: tensors[k] for k in list(tensors)[:5]}
        p = os.path.join(tmp, label + ".safetensors")
        save_file(few, p, metadata=m)
        fails += roundtrip_case(label, driver, tmp, p, {k: ref[k] for k in few}, m, lambda _p: None)
    return fails


def torch_case(driver, tmp, np, rng):
    import torch
    from safetensors.torch import save_file, load_file
    torch.set_num_threads(1)
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    if hasattr(torch, "float8_e4m3fn"):
        dtypes["F8_E4M3"] = torch.float8_e4m3fn
        dtypes["F8_E5M2"] = torch.float8_e5m2
    if hasattr(torch, "uint64"):
        dtypes.update({"U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16})
    shapes = random_shapes(rng, 2 * len(dtypes))
    tensors, ref = {}, {}
    for i, shape in enumerate(shapes):
        name = list(dtypes)[i % len(dtypes)]
        dt = dtypes[name]
        n = int(np.prod(shape, dtype=np.int64))
        if name in ("F64", "F32", "F16"):
            t = torch.from_numpy(float_values(np, rng, n, np.float64)).to(dt)
        elif name in ("BF16",):
            t = torch.from_numpy(float_values(np, rng, n, np.float32)).to(dt)
        elif name.startswith("F8"):
            t = torch.from_numpy(rng.integers(0, 256, size=n, dtype=np.uint8)).view(dt)
        elif name == "BOOL":
            t = torch.from_numpy(rng.integers(0, 2, size=n).astype(np.bool_))
        else:
            bits = {"I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8, "U64": 64, "U32": 32, "U16": 16}[name]
            t = torch.from_numpy(rng.integers(0, 256, size=n * bits // 8, dtype=np.uint8)).view(dt)
        t = t.reshape(shape).contiguous()
        key = f"model.{['a', 'b', 'c'][i % 3]}.{name.lower()}_{i}"
        tensors[key] = t
        u8 = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        raw = u8.numpy().tobytes()
        f32 = t.float().numpy().tobytes() if name in ("F64", "F32", "F16", "BF16") else None
        ref[key] = (name, tuple(shape), raw, f32)
    meta = {"format": "pt", "a": "1", "b": "two"}
    path = os.path.join(tmp, "torch.safetensors")
    save_file(tensors, path, metadata=meta)

    def load_back(p):
        got = load_file(p)
        for k, t in tensors.items():
            g = got.get(k)
            if g is None or g.dtype != t.dtype or tuple(g.shape) != tuple(t.shape):
                return f"tensor {k} differs in dtype or shape"
            if t.numel() and not torch.equal(g.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)):
                return f"tensor {k} differs in bytes"
        from safetensors import safe_open
        with safe_open(p, framework="pt") as f:
            if f.metadata() != meta:
                return f"metadata {f.metadata()} != {meta}"
        return None
    return roundtrip_case("torch", driver, tmp, path, ref, meta, load_back)


def image(header, data_len):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(h)) + h + bytes((i * 7) & 255 for i in range(data_len))


def broken_case(driver, tmp):
    from safetensors.numpy import load
    f32 = lambda b, e, n: {"dtype": "F32", "shape": [n], "data_offsets": [b, e]}  # noqa: E731
    refused = {
        "hole": (image({"a": f32(0, 4, 1), "b": f32(8, 12, 1)}, 12)),
        "overlap": (image({"a": f32(0, 8, 2), "b": f32(4, 12, 2)}, 12)),
        "trailing bytes": (image({"a": f32(0, 4, 1)}, 8)),
        "size mismatch": (image({"a": f32(0, 8, 3)}, 8)),
        "offsets past end": (image({"a": f32(0, 8, 2)}, 4)),
        "zero-size inside another": (image({"a": f32(0, 8, 2), "z": f32(4, 4, 0)}, 8)),
        "header longer than file": struct.pack("<Q", 100) + b"{}",
        "bad dtype": image({"a": {"dtype": "F31", "shape": [1], "data_offsets": [0, 4]}}, 4),
        "negative shape": image(b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', 4),
        "not an object": image(b"[]", 0),
    }
    accepted = {
        "zero-size first": image({"z": f32(0, 0, 0), "a": f32(0, 8, 2)}, 8),
        "zero-size last": image({"a": f32(0, 8, 2), "z": f32(8, 8, 0)}, 8),
        "entries out of order": image({"b": f32(4, 8, 1), "a": f32(0, 4, 1)}, 8),
        "spaces around": image(b'  {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  \n', 4),
        "empty": image({}, 0),
    }
    fails = 0
    out = os.path.join(tmp, "broken")
    os.makedirs(out, exist_ok=True)
    for expect_ok, cases in ((False, refused), (True, accepted)):
        for name, data in cases.items():
            p = os.path.join(tmp, "case.safetensors")
            open(p, "wb").write(data)
            try:
                load(data)
                theirs = True
            except Exception:  # noqa: BLE001
                theirs = False
            try:
                driver_list(driver, p, out)
                ours, why = True, ""
            except RuntimeError as e:
                ours, why = False, str(e)
            if theirs != expect_ok:
                say(f"not ok - broken '{name}': the Python library {'accepts' if theirs else 'refuses'} it, "
                    f"which this test did not expect")
                fails += 1
            elif ours != theirs:
                say(f"not ok - broken '{name}': Python {'accepts' if theirs else 'refuses'}, we "
                    f"{'accept' if ours else 'refuse: ' + why}")
                fails += 1
            else:
                say(f"ok - broken '{name}': both {'accept' if ours else 'refuse'}" + (f" ({why})" if why else ""))
    return fails


def sharded_case(driver, tmp):
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    d = os.path.join(tmp, "tiny-llama")
    model.save_pretrained(d, max_shard_size="40KB", safe_serialization=True)
    shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    if not os.path.exists(os.path.join(d, "model.safetensors.index.json")) or len(shards) < 2:
        say(f"not ok - sharded: save_pretrained wrote {shards} and no index; the test needs shards")
        return 1
    ref, owner = {}, {}
    for s in shards:
        for k, t in load_file(os.path.join(d, s)).items():
            u8 = t.reshape(-1).view(torch.uint8)
            ref[k] = ("BF16" if t.dtype == torch.bfloat16 else "F32", tuple(t.shape), u8.numpy().tobytes(),
                      t.float().numpy().tobytes())
            owner[k] = s
    out = os.path.join(tmp, "sharded")
    os.makedirs(out, exist_ok=True)
    try:
        ours, _ = driver_list(driver, d, out)
        bad = compare("sharded", ours, ref, {}, {})
        bad += [f"{r['name']}: file {r['file']}" for r, _, _ in ours
                if os.path.basename(r["file"]) != owner.get(r["name"])]
    except RuntimeError as e:
        bad = [f"our reader refused the folder: {e}"]
    if bad:
        say(f"not ok - sharded (seed {SEED}): " + "; ".join(bad[:5]))
        return 1
    say(f"ok - sharded: {len(shards)} shards by save_pretrained open as one name space of {len(ref)} tensors")
    return 0


def main():
    try:
        import numpy as np
        import safetensors  # noqa: F401
    except ImportError as e:
        say(f"skip - safetensors_py: the reference environment lacks numpy or safetensors ({e})")
        return 0
    try:
        driver = build_driver()
    except subprocess.CalledProcessError as e:
        say(f"not ok - build safetensors_driver: exited {e.returncode}")
        return 1
    rng = np.random.default_rng(SEED)
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        fails += numpy_case(driver, tmp, np, rng)
        fails += broken_case(driver, tmp)
        try:
            import torch  # noqa: F401
        except ImportError as e:
            say(f"skip - torch cases: torch is not installed ({e})")
            return 1 if fails else 0
        fails += torch_case(driver, tmp, np, rng)
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            say(f"skip - sharded: transformers is not installed ({e})")
            return 1 if fails else 0
        fails += sharded_case(driver, tmp)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
