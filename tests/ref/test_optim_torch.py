"""lib/optim (through tests/ref/optim_driver) against the Python stack:
torch.optim.AdamW, transformers' learning-rate schedules, torch's
clip_grad_norm_.

AdamW: parameters split into tensors of awkward sizes (so torch's vector
loops leave tails), 60 steps of random gradients at three scales, the lr
changing every step, under four settings of lr / betas / eps / weight decay
(one with 1 - beta1 >= 0.5, the other branch of torch's lerp), against
torch.optim.AdamW(foreach=False) on one thread:
  - exp_avg and exp_avg_sq must be bit-identical;
  - parameters: max |ours - torch| / max |torch| < 1e-6. They are not always
    bit-identical: torch's fp32 sqrt on x86 is MKL's vectorized one, off by
    one unit in the last place for some values, ours is correctly rounded
    (lib/optim.h). The count of identical values is printed.
  - torch's own _single_tensor_adam operations, run here with a correctly
    rounded sqrt in place of Tensor.sqrt (the only change), must give our
    parameters bit for bit: that proves the rest of the arithmetic order.
  - against torch.optim.AdamW(fused=True), which transformers' Trainer
    picks by default with torch >= 2.8, the same tolerance (its CPU kernel
    takes a correctly rounded sqrt and agrees with us nearly everywhere);
  - the same run saved and loaded after step 25 (adamw_save / adamw_load)
    must end bit-identical to the run that was not interrupted.
Schedules: linear, cosine, cosine_with_min_lr (min_lr_rate, and min_lr
converted as transformers converts it), constant_with_warmup, warm-up 0 and
37, 300 steps and a few past the end, against get_scheduler's LambdaLR
stepped as the Trainer steps it: identical doubles.
Clipping: clip_grad_norm_ (default foreach and foreach=False) on lists of
tensors of sizes 1 .. 33000, clipped (max_norm below the norm) and not: the
returned norm and every clipped gradient identical.
Seed: $LORAPIPE_SEED or the time, printed.
"""
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

from tinymodels import failed, report, say

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "optim_driver")
P_TOL = 1e-6


def driver(args, data=b""):
    p = subprocess.run([DRIVER, *map(str, args)], input=data, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"optim_driver {' '.join(map(str, args))}: " + p.stderr.decode(errors="replace")[:300])
    return p.stdout


# ---- AdamW ----

SIZES = [37, 128, 1000, 5, 16, 33, 4096, 1]
SETTINGS = [  # lr, beta1, beta2, eps, weight_decay
    (1e-3, 0.9, 0.999, 1e-8, 0.01),
    (2e-4, 0.9, 0.95, 1e-6, 0.0),
    (5e-2, 0.8, 0.99, 1e-8, 0.1),
    (1e-3, 0.3, 0.5, 1e-4, 0.0),
]
STEPS = 60


def adam_inputs(rng, lr0):
    n = sum(SIZES)
    p0 = (rng.standard_normal(n) * 0.1).astype(np.float32)
    grads, lrs = [], []
    for s in range(STEPS):
        g = (rng.standard_normal(n) * rng.choice([1e-4, 1.0, 30.0])).astype(np.float32)
        g[rng.integers(0, n, size=20)] = 0  # some zero gradients
        grads.append(g)
        lrs.append(lr0 * (0.5 + 0.5 * np.cos(np.pi * s / STEPS)))
    return p0, grads, lrs


def split(x):
    out, at = [], 0
    for s in SIZES:
        out.append(x[at:at + s].copy())
        at += s
    return out


def torch_adamw(torch, p0, grads, lrs, b1, b2, eps, wd, fused=False):
    params = [torch.nn.Parameter(torch.from_numpy(x)) for x in split(p0)]
    kind = dict(fused=True) if fused else dict(foreach=False)
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=(b1, b2), eps=eps, weight_decay=wd, **kind)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        for p, x in zip(params, split(g)):
            p.grad = torch.from_numpy(x)
        opt.step()
    cat = lambda xs: torch.cat([x.detach() for x in xs]).numpy()  # noqa: E731
    return (cat(params), cat([opt.state[p]["exp_avg"] for p in params]),
            cat([opt.state[p]["exp_avg_sq"] for p in params]))


def torch_ops_exact_sqrt(torch, p0, grads, lrs, b1, b2, eps, wd):
    """torch/optim/adam.py's _single_tensor_adam for AdamW (decoupled decay,
    no amsgrad, not capturable), the same tensor operations in the same
    order, with only exp_avg_sq.sqrt() replaced by a correctly rounded fp32
    sqrt (numpy's)."""
    params = [torch.from_numpy(x) for x in split(p0)]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    for step, (g, lr) in enumerate(zip(grads, lrs), start=1):
        for param, grad, exp_avg, exp_avg_sq in zip(params, [torch.from_numpy(x) for x in split(g)], ms, vs):
            if wd != 0:
                param.mul_(1 - lr * wd)
            exp_avg.lerp_(grad, 1 - b1)
            exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            bias_correction1 = 1 - b1 ** float(step)
            bias_correction2 = 1 - b2 ** float(step)
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            root = torch.from_numpy(np.sqrt(exp_avg_sq.numpy()))
            denom = (root / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)
    return torch.cat(params).numpy()


def ours_adamw(p0, grads, lrs, b1, b2, eps, wd, resume=None):
    n = len(p0)
    data = [p0.tobytes()]
    for g, lr in zip(grads, lrs):
        data.append(struct.pack("<d", float(lr)))
        data.append(g.tobytes())
    args = ["adamw", n, len(grads), repr(b1), repr(b2), repr(eps), repr(wd)]
    if resume:
        args += list(resume)
    out = np.frombuffer(driver(args, b"".join(data)), dtype="<f4")
    if out.size != 3 * n:
        raise RuntimeError(f"optim_driver adamw: {out.size} values, expected {3 * n}")
    return out[:n], out[n:2 * n], out[2 * n:]


def test_adamw(torch, rng, tmp):
    for k, (lr0, b1, b2, eps, wd) in enumerate(SETTINGS):
        name = f"adamw lr={lr0} betas=({b1},{b2}) eps={eps} wd={wd}"
        p0, grads, lrs = adam_inputs(rng, lr0)
        try:
            p, m, v = ours_adamw(p0, grads, lrs, b1, b2, eps, wd)
            rp, rm, rv = ours_adamw(p0, grads, lrs, b1, b2, eps, wd,
                                    resume=(25, os.path.join(tmp, f"adamw{k}.safetensors")))
        except RuntimeError as ex:
            report(False, name, str(ex))
            continue
        tp, tm, tv = torch_adamw(torch, p0, grads, lrs, b1, b2, eps, wd)
        m_bad, v_bad = int(np.sum(m != tm)), int(np.sum(v != tv))
        report(m_bad == 0 and v_bad == 0, f"{name}: moments bit-identical",
               f"seed {SEED}: exp_avg differs in {m_bad}, exp_avg_sq in {v_bad} of {m.size}")
        err = float(np.max(np.abs(p.astype(np.float64) - tp)) / np.max(np.abs(tp)))
        same = int(np.sum(p == tp))
        report(err < P_TOL, f"{name}: parameters vs torch.optim.AdamW",
               f"seed {SEED}: max|ours-torch|/max|torch| = {err:.3g} (tol {P_TOL})")
        say(f"# {name}: {same} of {p.size} parameters bit-identical, max rel diff {err:.3g} "
            f"(torch's MKL sqrt, see the docstring)")
        fp, _, _ = torch_adamw(torch, p0, grads, lrs, b1, b2, eps, wd, fused=True)
        ferr = float(np.max(np.abs(p.astype(np.float64) - fp)) / np.max(np.abs(fp)))
        report(ferr < P_TOL, f"{name}: parameters vs torch.optim.AdamW(fused=True), the Trainer's default",
               f"seed {SEED}: max|ours-torch|/max|torch| = {ferr:.3g} (tol {P_TOL})")
        say(f"# {name}: fused: {int(np.sum(p == fp))} of {p.size} bit-identical, max rel diff {ferr:.3g}")
        ep = torch_ops_exact_sqrt(torch, p0, grads, lrs, b1, b2, eps, wd)
        bad = int(np.sum(p != ep))
        report(bad == 0, f"{name}: torch's operations with a correctly rounded sqrt, bit for bit",
               f"seed {SEED}: {bad} of {p.size} parameters differ, max abs {np.max(np.abs(p - ep)):.3g}")
        bad = int(np.sum(rp != p) + np.sum(rm != m) + np.sum(rv != v))
        report(bad == 0, f"{name}: saved and loaded after step 25, same end",
               f"{bad} values differ from the uninterrupted run")


# ---- schedules ----

def test_schedules(torch, tf):
    total, lr0 = 300, 3e-4
    cases = []
    for warmup in (0, 37):
        cases += [
            ("linear", "linear", warmup, {}, 0.0),
            ("cosine", "cosine", warmup, {}, 0.0),
            ("cosine_with_min_lr min_lr_rate=0.1", "cosine_with_min_lr", warmup, {"min_lr_rate": 0.1}, 0.1),
            ("cosine_with_min_lr min_lr=1e-5", "cosine_with_min_lr", warmup, {"min_lr": 1e-5}, 1e-5 / lr0),
            ("constant_with_warmup", "constant_with_warmup", warmup, {}, 0.0),
        ]
    steps = total + 5
    for label, kind, warmup, kwargs, rate in cases:
        name = f"schedule {label} warmup={warmup}"
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
        sched = tf.get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total,
                                 scheduler_specific_kwargs=kwargs or None)
        ref = []
        for _ in range(steps):
            ref.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        ref = np.array(ref, dtype=np.float64)
        try:
            ours = np.frombuffer(driver(["lr", kind, repr(lr0), warmup, total, 0.5, repr(rate), steps]), dtype="<f8")
        except RuntimeError as ex:
            report(False, name, str(ex))
            continue
        bad = np.nonzero(ours != ref)[0]
        report(ours.size == steps and bad.size == 0, name,
               f"{bad.size} of {steps} steps differ; first at step {bad[:1]}: ours {ours[bad[:1]]}, "
               f"transformers {ref[bad[:1]]}")
    # the floor is reached, and warm-up starts at 0
    ours = np.frombuffer(driver(["lr", "cosine_with_min_lr", repr(lr0), 10, total, 0.5, "0.1", total + 1]), "<f8")
    floor = 0.1 * lr0
    ok = ours[0] == 0 and abs(ours[total] - floor) <= 1e-12 * floor and ours[10:].min() >= floor * (1 - 1e-12)
    report(ok, "schedule cosine_with_min_lr: starts at 0, never below the floor, ends on it",
           f"lr[0] {ours[0]}, lr[total] {ours[total]}, min after warm-up {ours[10:].min()}, floor {floor}")


# ---- clipping ----

def test_clip(torch, rng):
    lens_cases = [[1], [7], [8], [9], [1000], [37, 128, 1000, 5, 16, 33, 4096, 1],
                  [33000, 17, 8 * 512], [3] * 20, [64] * 9]
    for lens in lens_cases:
        n = sum(lens)
        for scale, max_norm in ((1.0, 1.0), (1e-3, 1.0), (5.0, 0.3), (1e3, 1e6)):
            for foreach in (None, False):
                name = f"clip_grad_norm_ lens={lens if len(lens) < 9 else f'{len(lens)} tensors'} " \
                       f"scale={scale} max_norm={max_norm} foreach={foreach}"
                g = (rng.standard_normal(n) * scale).astype(np.float32)
                params = []
                at = 0
                for length in lens:
                    p = torch.nn.Parameter(torch.zeros(length))
                    p.grad = torch.from_numpy(g[at:at + length].copy())
                    params.append(p)
                    at += length
                tnorm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach).item()
                tg = torch.cat([p.grad for p in params]).numpy()
                try:
                    out = np.frombuffer(driver(["clip", repr(max_norm), ",".join(map(str, lens))], g.tobytes()),
                                        dtype="<f4")
                except RuntimeError as ex:
                    report(False, name, str(ex))
                    continue
                norm, og = out[0], out[1:]
                bad = int(np.sum(og != tg))
                report(norm == np.float32(tnorm) and bad == 0, name,
                       f"seed {SEED}: norm ours {norm!r} torch {np.float32(tnorm)!r}; {bad} of {n} clipped "
                       f"values differ (max rel {np.max(np.abs(og - tg)) / max(np.max(np.abs(tg)), 1e-30):.3g})")


def main():
    global SEED
    SEED = int(os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000))
    say(f"# seed {SEED}")
    if not os.access(DRIVER, os.X_OK):
        report(False, "optim_driver", f"{DRIVER} is not built (make build/ref/optim_driver)")
        return 1
    import torch
    import transformers as tf
    torch.set_num_threads(1)  # one thread: torch's loops then split tensors only where we expect
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="optim-") as tmp:
        test_adamw(torch, rng, tmp)
    test_schedules(torch, tf)
    test_clip(torch, rng)
    say(f"# {time.time() - t0:.1f} s")
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
