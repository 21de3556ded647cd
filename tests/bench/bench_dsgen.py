"""ds-gen --requests against the official openai Python client (AsyncOpenAI with
asyncio.gather and a semaphore) doing the same requests: requests per second
and client CPU time per request at concurrency 1, 16 and 64, in one run, as
ratios (targets: ds-gen >= 3x the requests/s, <= 0.2x the CPU per request).

The endpoint is tests/bench/dsgen_fast_server.c, built here with cc: one
thread, epoll, HTTP/1.1 keep-alive, the same small chat completion to every
request, so that the server is not what is measured. Both clients run as
their own processes against the same server with the same request lines.
ds-gen is measured whole (start-up, reading the input, writing every answer
to a file, as a user runs it): wall time, and user + system CPU from wait4.
The openai client is measured from inside its process around the requests
only (interpreter start-up and imports left out; the answers kept in memory,
not written): wall time and time.process_time(). Both choices favour the
Python side. The server's CPU counts for neither.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DSGEN = os.path.join(ROOT, "bin", "ds-gen")
SERVER_SRC = os.path.join(ROOT, "tests", "bench", "dsgen_fast_server.c")
N_DSGEN = int(os.environ.get("BENCH_DSGEN_REQUESTS", "4000"))
N_OPENAI = int(os.environ.get("BENCH_DSGEN_OPENAI_REQUESTS", "1000"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_DSGEN_CONCURRENCY", "1,16,64").split(",")]

OPENAI_CLIENT = r'''
import asyncio, json, sys, time
from openai import AsyncOpenAI
url, path, conc = sys.argv[1], sys.argv[2], int(sys.argv[3])
reqs = [json.loads(l) for l in open(path)]
async def main():
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    sem = asyncio.Semaphore(conc)
    async def one(r):
        async with sem:
            resp = await client.chat.completions.create(model="bench", messages=r["messages"])
            return resp.choices[0].message.content
    c0, t0 = time.process_time(), time.perf_counter()
    out = await asyncio.gather(*(one(r) for r in reqs))
    t1, c1 = time.perf_counter(), time.process_time()
    assert len(out) == len(reqs) and all(o == "OK, done." for o in out)
    print(json.dumps({"wall": t1 - t0, "cpu": c1 - c0}))
asyncio.run(main())
'''


def write_requests(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": "r%d" % i, "model": "bench",
                                "messages": [{"role": "user", "content": "Is my access active? (%d)" % i}]}) + "\n")


def run_dsgen(url, inp, out, conc):
    if os.path.exists(out):
        os.remove(out)
    t0 = time.perf_counter()
    p = subprocess.Popen([DSGEN, "--requests", inp, "--base-url", url, "-o", out, "-j", str(conc), "-q"])
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(out) as f:
        lines = sum(1 for _ in f)
    if p.returncode != 0 or lines != N_DSGEN:
        raise RuntimeError("ds-gen exit %d, %d lines" % (p.returncode, lines))
    return wall, ru.ru_utime + ru.ru_stime


def run_openai(url, inp, conc, tmp):
    script = os.path.join(tmp, "client.py")
    with open(script, "w") as f:
        f.write(OPENAI_CLIENT)
    p = subprocess.run([sys.executable, script, url, inp, str(conc)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("openai client failed: %s" % p.stderr[-400:])
    r = json.loads(p.stdout)
    return r["wall"], r["cpu"]


def main():
    if not os.access(DSGEN, os.X_OK):
        print("bench_dsgen: %s not built" % DSGEN)
        return 0
    try:
        import openai
    except ImportError:
        print("bench_dsgen: the openai package is not installed (tests/ref/requirements.txt)")
        return 0
    tmp = tempfile.mkdtemp(prefix="bench-dsgen-")
    server = None
    try:
        exe = os.path.join(tmp, "fast_server")
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", exe, SERVER_SRC], check=True)
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([exe, port_file])
        for _ in range(100):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.05)
        url = "http://127.0.0.1:%s/v1" % open(port_file).read().strip()
        inp_d, inp_o = os.path.join(tmp, "d.jsonl"), os.path.join(tmp, "o.jsonl")
        write_requests(inp_d, N_DSGEN)
        write_requests(inp_o, N_OPENAI)
        print("endpoint: tests/bench/dsgen_fast_server.c (C, epoll, keep-alive); openai %s; %d requests for ds-gen, "
              "%d for the openai client; CPUs available: %d" % (openai.__version__, N_DSGEN, N_OPENAI,
                                                                 len(os.sched_getaffinity(0))))
        for conc in CONCURRENCY:
            dw, dc = run_dsgen(url, inp_d, os.path.join(tmp, "out.jsonl"), conc)
            ow, oc = run_openai(url, inp_o, conc, tmp)
            d_rps, o_rps = N_DSGEN / dw, N_OPENAI / ow
            d_cpu, o_cpu = dc / N_DSGEN * 1e6, oc / N_OPENAI * 1e6
            print("concurrency %3d   ds-gen %8.0f req/s %6.1f us CPU/req   openai %7.0f req/s %7.1f us CPU/req   "
                  "ratio %5.1fx req/s (target >= 3x), %.3fx CPU/req (target <= 0.2x)"
                  % (conc, d_rps, d_cpu, o_rps, o_cpu, d_rps / o_rps, d_cpu / o_cpu), flush=True)
    finally:
        if server:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
