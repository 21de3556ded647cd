"""What ds-gen's tests share: the case protocol, the fault server, runs of ds-gen."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DSGEN = os.environ.get("DSGEN", os.path.join(ROOT, "bin", "ds-gen"))  # DSGEN=... runs another build (ASan)
DSFMT = os.path.join(ROOT, "bin", "ds-fmt")
FAULT_SERVER = os.path.join(ROOT, "tests", "ref", "fault_server.py")
FIXTURES = os.environ.get("LORAPIPE_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))

failed = False


def ok(name):
    print("ok - " + name, flush=True)


def notok(name, why):
    global failed
    failed = True
    print("not ok - %s: %s" % (name, str(why).replace("\n", " ")[:600]), flush=True)


def skip(name, why):
    print("skip - %s: %s" % (name, why), flush=True)


def check(name, cond, why):
    """ok when cond, else not ok with why; returns cond."""
    if cond:
        ok(name)
    else:
        notok(name, why)
    return cond


class FaultServer:
    """tests/ref/fault_server.py on a free loopback port, with its attempt log."""

    def __init__(self, tmp, *args):
        self.tmp = tmp
        fd, self.log = tempfile.mkstemp(dir=tmp, suffix=".log")
        os.close(fd)
        port_file = self.log + ".port"
        self.proc = subprocess.Popen([sys.executable, FAULT_SERVER, "--port-file", port_file, "--log", self.log,
                                      *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not os.path.exists(port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the fault server did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = "http://127.0.0.1:%d/v1" % self.port

    def attempts(self):
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(l) for l in f if l.strip()]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def env_without_key(**extra):
    env = dict(os.environ)
    for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(k, None)
    env.update(extra)
    return env


def dsgen(*args, env=None, timeout=60):
    """Runs ds-gen; returns the CompletedProcess (text)."""
    return subprocess.run([DSGEN, *args], capture_output=True, text=True, env=env or env_without_key(),
                          timeout=timeout)


def read_jsonl(path):
    """The records of a JSON Lines file; raises on a line that is not JSON."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write_requests(path, n, start=0, with_ids=True):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            rec = {"messages": [{"role": "user", "content": "question %d" % i}], "tag": i}
            if with_ids:
                rec["id"] = "q%d" % i
            f.write(json.dumps(rec) + "\n")


def lines_in(path):
    """The number of whole lines in path (0 when it does not exist)."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_lines(p, path, n, limit=20.0):
    """Waits until path holds n whole lines or p has ended (at most limit seconds)."""
    t0 = time.time()
    while p.poll() is None and lines_in(path) < n and time.time() - t0 < limit:
        time.sleep(0.005)


def kill_at(cmd, delay, env, out=None, after_lines=0):
    """Starts cmd, SIGKILLs it delay seconds after out holds after_lines whole
    lines (at once when 0), if still running; returns its status. Counting
    lines rather than seconds keeps "a kill lands mid-run" true on a slow host."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if after_lines:
        wait_lines(p, out, after_lines)
    try:
        p.wait(delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return p.returncode


def finish():
    sys.exit(1 if failed else 0)
