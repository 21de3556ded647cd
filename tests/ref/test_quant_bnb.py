"""Our NF4 and INT8 weights (lib/quant.c) against bitsandbytes on the CPU, and
lib/half.h against numpy's float16 and torch's bfloat16.

Everything is compared bit for bit (tolerance 0):
  nf4-*      bitsandbytes.functional.quantize_4bit(x, blocksize=64,
             compress_statistics=True, quant_type="nf4"): packed codes, the
             8-bit absmax codes, the fp32 absmax of each 256 block, the offset;
             then dequantize_4bit against our nf4_dequantize. Tensors of many
             sizes (multiples of 64 and not, odd, fewer than 256 blocks and
             more, more than 32768 blocks), normal, heavy-tailed, all zero, a
             zero block, subnormal and huge values; 2-D and 1-D.
  nf4-maps   our NF4 table and dynamic map equal the QuantState's code tensors
  int8-*     int8_vectorwise_quant codes and row scales (zero rows, exact
             ties), int8_vectorwise_dequant values
  half-*     f32_to_f16 against numpy astype(float16), f32_to_bf16 against
             torch .to(bfloat16), on 10^6 random fp32 (random bit patterns,
             normal values, values near the f16 range's edges); f16_to_f32
             on all 65536 patterns against numpy. NaN results must be NaN with
             the same sign (payloads differ between libraries by design).

torch runs on one thread: bitsandbytes' offset is absmax.mean(), and torch's
sum order depends on the thread count once there are 32768 blocks or more;
lib/quant.c reproduces the one-thread order (8-lane AVX2 vectors).
TORCH_COMPILE_DISABLE=1 (unless set otherwise): bitsandbytes compiles its
dequantization fallback with torch.compile once per shape, which takes most
of a minute here and gives the same values (checked with it enabled).
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "quant_driver")
SEED = int(os.environ.get("LORAPIPE_SEED", "20261201"))


def say(line):
    print(line, flush=True)


def first_diff(want, got):
    """Index of the first differing element (bytes or fp32 bits; NaN == NaN), or None."""
    want = np.ascontiguousarray(want).reshape(-1)
    got = np.ascontiguousarray(got).reshape(-1)
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"shape/dtype {want.shape} {want.dtype} vs {got.shape} {got.dtype}"
    if want.dtype == np.float32:
        bad = want.view(np.uint32) != got.view(np.uint32)
        bad &= ~(np.isnan(want) & np.isnan(got))
    else:
        bad = want != got
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None


def run_driver(args):
    subprocess.run([DRIVER] + args, check=True)


def nf4_cases(rng):
    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def heavy(*shape):
        return (rng.standard_t(2, shape) * 0.02).astype(np.float32)

    cases = []
    for n in [1, 2, 3, 63, 64, 65, 127, 128, 129, 1000, 64 * 255, 64 * 256, 64 * 256 + 1, 64 * 257 - 3,
              64 * 300 + 17, 100003]:
        cases.append((f"normal-{n}", normal(n)))
        cases.append((f"heavy-{n}", heavy(n)))
    cases.append(("2d-576x1536", normal(576, 1536) * np.float32(0.02)))
    cases.append(("2d-heavy-192x320", heavy(192, 320)))
    cases.append(("2d-odd-cols-33x65", normal(33, 65)))
    cases.append(("blocks-over-32768-1100x2048", normal(1100, 2048) * np.float32(0.05)))
    z = normal(64 * 10)
    z[128:192] = 0
    cases.append(("zero-block", z))
    cases.append(("all-zero", np.zeros(1000, np.float32)))
    cases.append(("single-value-blocks", np.full(64 * 300, 0.5, np.float32)))
    t = normal(64 * 40)
    t[:640] *= np.float32(1e-39)  # subnormal blocks: the 1e-38 divisor clamp
    t[640:700] *= np.float32(1e30)
    cases.append(("subnormal-and-huge", t))
    last = normal(64 * 3 + 5)
    last[-5:] = np.float32(1e-40)  # a short last block below the clamp
    cases.append(("short-subnormal-last-block", last))
    ties = np.repeat(np.array([1.0, -1.0, 0.5, -0.25, 0.0399, 0.04, -0.0455, 0.12], np.float32), 40)
    cases.append(("table-values-and-midpoints", ties))
    return cases


def check_nf4(torch, F, tmp, rng):
    fails = 0
    table = map_ = None
    for label, x in nf4_cases(rng):
        inp, out = os.path.join(tmp, "x.f32"), os.path.join(tmp, "nf4")
        x.tofile(inp)
        run_driver(["nf4", inp, out])
        ours = {
            "codes": np.fromfile(out + ".codes", np.uint8),
            "absmax_q": np.fromfile(out + ".absmax_q", np.uint8),
            "absmax2": np.fromfile(out + ".absmax2", np.float32),
            "offset": np.fromfile(out + ".offset", np.float32),
            "deq": np.fromfile(out + ".deq", np.float32),
        }
        table = np.fromfile(out + ".table", np.float32)
        map_ = np.fromfile(out + ".map", np.float32)
        xt = torch.from_numpy(x.copy())
        packed, st = F.quantize_4bit(xt, blocksize=64, compress_statistics=True, quant_type="nf4")
        deq = F.dequantize_4bit(packed, st).reshape(-1)
        theirs = {
            "codes": packed.reshape(-1).numpy(),
            "absmax_q": st.absmax.reshape(-1).numpy(),
            "absmax2": st.state2.absmax.reshape(-1).numpy(),
            "offset": np.array([float(st.offset)], np.float32).reshape(-1)
            if not torch.is_tensor(st.offset) else st.offset.reshape(-1).numpy(),
            "deq": deq.numpy(),
        }
        bad = []
        for k in ["codes", "absmax_q", "absmax2", "offset", "deq"]:
            d = first_diff(theirs[k], ours[k])
            if d is not None:
                w = theirs[k].reshape(-1)
                g = ours[k].reshape(-1)
                at = f"[{d}] bnb {w[d]!r} ours {g[d]!r}" if isinstance(d, int) else d
                bad.append(f"{k} {at}")
        if bad:
            fails += 1
            say(f"not ok - nf4-{label}: {'; '.join(bad[:3])} (seed {SEED})")
        else:
            say(f"ok - nf4-{label}")
    # the tables themselves
    packed, st = F.quantize_4bit(torch.ones(256), blocksize=64, compress_statistics=True, quant_type="nf4")
    bad = []
    if first_diff(st.code.float().numpy(), table) is not None:
        bad.append(f"NF4 table differs: {st.code.numpy()} vs {table}")
    d = first_diff(st.state2.code.float().numpy(), map_)
    if d is not None:
        bad.append(f"dynamic map [{d}]: bnb {st.state2.code[d].item()!r} ours {map_[d]!r}")
    if bad:
        fails += 1
        say(f"not ok - nf4-maps: {'; '.join(bad)}")
    else:
        say("ok - nf4-maps")
    return fails


def check_int8(torch, F, tmp, rng):
    fails = 0
    a = rng.standard_normal((40, 300)).astype(np.float32)
    a[5] = 0
    b = (rng.standard_t(2, (64, 96)) * 0.02).astype(np.float32)
    c = np.tile(np.arange(-127, 128, dtype=np.float32)[None, :] + np.float32(0.5), (3, 1))
    c[:, -1] = 127.0  # absmax 127: x * (127 / 127) keeps the .5 ties exact
    d = np.tile(np.array([127.0, -63.5, 62.5, 0.5, -0.5, 1.5, 2.5], np.float32), (2, 1))
    # near ties under any absmax: x = (n + 0.5) * m / 127 and its float neighbours, where
    # torch's 127.0 / m (the reciprocal times 127, two roundings) decides the code
    m = rng.uniform(0.05, 2.0, 200).astype(np.float32)
    n = rng.integers(-126, 126, (200, 63))
    mid = ((n + 0.5) * m[:, None].astype(np.float64) / 127).astype(np.float32)
    e = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))], axis=1)
    e = np.concatenate([e, m[:, None]], axis=1).astype(np.float32)
    for label, x in [("normal-zero-row", a), ("heavy", b), ("ties", c), ("ties-small", d), ("near-ties", e)]:
        inp, out = os.path.join(tmp, "x.f32"), os.path.join(tmp, "i8")
        x.tofile(inp)
        run_driver(["int8", str(x.shape[1]), inp, out])
        oq = np.fromfile(out + ".q", np.int8)
        os_ = np.fromfile(out + ".scale", np.float32)
        od = np.fromfile(out + ".deq", np.float32)
        cb, scb, _ = F.int8_vectorwise_quant(torch.from_numpy(x.copy()))
        dq = F.int8_vectorwise_dequant(cb, scb)
        bad = []
        for k, w, g in [("codes", cb.numpy(), oq), ("scales", scb.numpy(), os_), ("deq", dq.float().numpy(), od)]:
            dd = first_diff(w, g)
            if dd is not None:
                at = f"[{dd}] bnb {w.reshape(-1)[dd]!r} ours {g[dd]!r}" if isinstance(dd, int) else dd
                bad.append(f"{k} {at}")
        if bad:
            fails += 1
            say(f"not ok - int8-{label}: {'; '.join(bad)} (seed {SEED})")
        else:
            say(f"ok - int8-{label}")
    return fails


def check_half(torch, tmp, rng):
    fails = 0
    n = 1_000_000
    bits = rng.integers(0, 2**32, n // 2, dtype=np.uint64).astype(np.uint32)
    near = rng.integers(0, 2**32, n // 4, dtype=np.uint64).astype(np.uint32)
    near = (near & np.uint32(0x807FFFFF)) | ((rng.integers(0x60, 0xA0, n // 4).astype(np.uint32)) << np.uint32(23))
    normal = rng.standard_normal(n - n // 2 - n // 4).astype(np.float32)
    x = np.concatenate([bits.view(np.float32), near.view(np.float32), normal])
    inp, out = os.path.join(tmp, "x.f32"), os.path.join(tmp, "half")
    x.tofile(inp)
    run_driver(["half", inp, out])
    of16 = np.fromfile(out + ".f16", np.uint16)
    obf16 = np.fromfile(out + ".bf16", np.uint16)
    oall = np.fromfile(out + ".f16all", np.float32)

    def compare(name, want, got, is_nan):
        sign_ok = (want & 0x8000) == (got & 0x8000)
        exp_all = {"f16": 0x7C00, "bf16": 0x7F80}[name]
        got_nan = ((got & exp_all) == exp_all) & ((got & ~np.uint16(exp_all | 0x8000)) != 0)
        bad = np.flatnonzero(np.where(is_nan, ~(got_nan & sign_ok), want != got))
        if bad.size:
            i = int(bad[0])
            say(f"not ok - half-{name}: {bad.size} of {want.size} differ; first fp32 0x{x.view(np.uint32)[i]:08x}: "
                f"want 0x{want[i]:04x} got 0x{got[i]:04x} (seed {SEED})")
            return 1
        say(f"ok - half-{name}: {want.size} values")
        return 0

    with np.errstate(all="ignore"):
        want16 = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    fails += compare("f16", want16, of16, nan)
    wantbf = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    # torch writes every NaN as 0x7fc0, dropping the sign: only NaN-ness is compared there
    fails += compare("bf16", np.where(nan, (x.view(np.uint32) >> 16).astype(np.uint16), wantbf), obf16, nan)
    allh = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    wantall = allh.astype(np.float32)
    d = first_diff(wantall, oall)
    nan_sign = np.all(np.signbit(wantall[np.isnan(wantall)]) == np.signbit(oall[np.isnan(wantall)]))
    if d is not None or not nan_sign:
        fails += 1
        say(f"not ok - half-f16-to-f32-all: pattern {d}: numpy {wantall[d] if isinstance(d, int) else ''!r} "
            f"ours {oall[d] if isinstance(d, int) else ''!r}")
    else:
        say("ok - half-f16-to-f32-all: 65536 patterns")
    return fails


def main():
    try:
        import torch
        import bitsandbytes.functional as F
    except ImportError as e:
        say(f"skip - quant_bnb: torch or bitsandbytes is not installed ({e})")
        return 0
    if not os.access(DRIVER, os.X_OK):
        say(f"not ok - quant_bnb: {DRIVER} is not built (make build/ref/quant_driver)")
        return 1
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    fails = 0
    with tempfile.TemporaryDirectory(prefix="quant_bnb.") as tmp:
        fails += check_nf4(torch, F, tmp, rng)
        fails += check_int8(torch, F, tmp, rng)
        fails += check_half(torch, tmp, rng)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
