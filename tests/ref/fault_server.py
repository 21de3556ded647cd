#!/usr/bin/env python3
"""A fault-injecting OpenAI-compatible chat-completions server for ds-gen's tests.

Standard library only, so it runs under the system python3 as well as the
reference venv. It listens on 127.0.0.1 (a free port, written to --port-file)
and answers POST .../chat/completions. What each attempt gets is scripted per
request: attempts are counted per X-Client-Request-Id header (ds-gen sends one, the
same on every retry of a request), and attempt i (0-based) gets the i-th
entry of --faults, or a good answer once the list is used up; --always gives
every attempt the same fault. Faults:

  429          429 with a JSON error, no Retry-After
  429ra:S      429 with Retry-After: S (seconds)
  429ms:MS     429 with retry-after-ms: MS
  500 502 503  that status with a JSON error
  400          400 (not retryable)
  401          401 whose message echoes the Authorization header (ds-gen must scrub the key)
  slow:S       a good answer after S seconds (past the client's timeout)
  drop         headers promising 400 bytes, 20 sent, connection closed
  malformed    200 application/json with a body that is not JSON
  truncated    200 application/json with a JSON body cut in half (Content-Length consistent)
  html         200 text/html
  nochoices    200 JSON without "choices"

Good answers: in --mode chat, "echo: <last user message>"; in --mode gen (for
ds-gen --spec), a JSON object {"items": [...]} with as many utterances as the
prompt asks for, in the prompt's language (Russian prompts get Cyrillic),
with arguments made from the tool's schema in the prompt (required
properties filled by type), and an "answer" for negatives. --dup puts one
fixed utterance first in every reply (the duplicate check must drop it);
--wrap puts the JSON inside prose and a ``` fence.

Every attempt is logged to --log as a JSON line: {"id", "attempt", "fault",
"t", "auth"} where auth says whether an Authorization header came (never its
value).
"""
import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.attempts = {}
        self.counter = 0
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None

    def attempt(self, rid):
        with self.lock:
            n = self.attempts.get(rid, 0)
            self.attempts[rid] = n + 1
            self.counter += 1
            return n, self.counter

    def record(self, entry):
        if self.log:
            with self.lock:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()


def fake_value(schema, n):
    t = schema.get("type", "string") if isinstance(schema, dict) else "string"
    if isinstance(t, list):
        t = t[0]
    if "enum" in schema:
        return schema["enum"][0]
    if t == "integer":  # past 2**53 where the schema asks (an account number): a double would round it
        return schema["minimum"] // 2 * 2 + 246913579 + 2 * n if schema.get("minimum", 0) > 2 ** 53 else 1 + n % 9
    if t == "number":
        return 1.5
    if t == "boolean":
        return True
    if t == "array":
        return []
    if t == "object":
        return {}
    return "%04d" % (1000 + n % 9000)


def gen_items(prompt, seq, rid, dup):
    m = re.search(r"Write (\d+) different messages in (\w+)", prompt)
    count = int(m.group(1)) if m else 3
    lang = m.group(2) if m else "English"
    negative = "also write the assistant's answer" in prompt
    params = {}
    pm = re.search(r"Its parameters \(JSON schema\): (.*)\n", prompt)
    if pm:
        try:
            params = json.loads(pm.group(1))
        except ValueError:
            params = {}
    items = []
    if dup:
        items.append({"text": "Привет, это повтор" if lang == "Russian" else "This one is a repeat",
                      "arguments": {}, "answer": "ok"})
    for k in range(count):
        tag = hashlib.sha1(("%s/%d/%d" % (rid, seq, k)).encode()).hexdigest()[:10]
        word = "сообщение" if lang == "Russian" else "message"
        item = {"text": "%s %s %d" % (word, tag, k)}
        if negative:
            item["answer"] = ("ответ " if lang == "Russian" else "answer ") + tag
        else:
            args = {}
            for name in params.get("required", []):
                args[name] = fake_value(params.get("properties", {}).get(name, {}), seq + k)
            item["arguments"] = args
        items.append(item)
    return {"items": items}


def make_handler(state):
    args = state.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send_json(self, status, obj, headers=()):
            body = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.rstrip("/").endswith("/models"):
                self.send_json(200, {"object": "list", "data": [{"id": "fault", "object": "model"}]})
            else:
                self.send_json(404, {"error": {"message": "not found"}})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            rid = self.headers.get("X-Client-Request-Id", "")
            attempt, seq = state.attempt(rid)
            if args.always:
                fault = args.always
            elif attempt < len(args.faults):
                fault = args.faults[attempt]
            else:
                fault = "ok"
            state.record({"id": rid, "attempt": attempt, "fault": fault, "t": time.time(),
                          "auth": "Authorization" in self.headers})
            try:
                body = json.loads(raw)
            except ValueError:
                self.send_json(400, {"error": {"message": "request body is not JSON"}})
                return
            self.answer(fault, body, rid, seq)

        def answer(self, fault, body, rid, seq):
            err = lambda s, msg, h=(): self.send_json(s, {"error": {"message": msg, "type": "fault"}}, h)
            if fault == "429":
                return err(429, "rate limited")
            if fault.startswith("429ra:"):
                return err(429, "rate limited", [("Retry-After", fault[6:])])
            if fault.startswith("429ms:"):
                return err(429, "rate limited", [("retry-after-ms", fault[6:])])
            if fault in ("500", "502", "503", "400"):
                return err(int(fault), "injected %s" % fault)
            if fault == "401":
                return err(401, "Incorrect API key provided: %s" % self.headers.get("Authorization", ""))
            if fault == "html":
                b = b"<html><body>502 Bad Gateway</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)
                return
            if fault == "malformed":
                b = b"{this is not json"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)
                return
            if fault == "nochoices":
                return self.send_json(200, {"object": "chat.completion", "id": "x"})
            if fault == "drop":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "400")
                self.end_headers()
                self.wfile.write(b'{"id": "chatcmpl-1", "cho')
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.startswith("slow:"):
                time.sleep(float(fault[5:]))
            elif args.delay:
                time.sleep(args.delay)
            msgs = body.get("messages") or [{}]
            last = msgs[-1].get("content") if isinstance(msgs[-1], dict) else ""
            if args.mode == "gen":
                obj = gen_items(last or "", seq, rid, args.dup)
                content = json.dumps(obj, ensure_ascii=False)
                if args.wrap:
                    content = "Sure! Here they are:\n```json\n" + content + "\n```\nHope this helps."
            else:
                content = "echo: %s" % (last,)
            reply = {
                "id": "chatcmpl-%d" % seq, "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fault"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
            if fault == "truncated":
                b = json.dumps(reply).encode()
                b = b[: len(b) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)
                return
            self.send_json(200, reply)

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--faults", default="", help="comma-separated faults for attempts 0, 1, ... of each request")
    ap.add_argument("--always", default="")
    ap.add_argument("--mode", choices=["chat", "gen"], default="chat")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--dup", action="store_true")
    ap.add_argument("--wrap", action="store_true")
    args = ap.parse_args()
    args.faults = [f for f in args.faults.split(",") if f]
    state = State(args)
    ThreadingHTTPServer.daemon_threads = True
    # a client that timed out and closed is part of the script, not an error to print
    ThreadingHTTPServer.handle_error = lambda self, request, client_address: None
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
    try:
        srv.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
