"""A webhook receiver for tests/webhooks.rs, standard library only: what a backend would run.

    webhook_receiver.py --port P --secret S --out events.jsonl [--control FILE] [--requests FILE]

- Checks `X-Roomcast-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
  itself: a missing or wrong signature is refused with 401; a replay (a signature seen
  before) or a `t` more than 300 s old is refused with 400.
- De-duplicates by event id (also across its own restarts: it reads `--out` at start) and
  appends every event it accepts to `--out`, one JSON object a line, with `_at` (the
  receiver's Unix ms) added.
- `--control FILE`: while FILE holds `500`, it answers 500 after recording the batch (a
  receiver that took the events but failed to say so: they come again and are
  de-duplicated); while it holds `refuse`, it answers 500 without recording.
- `--requests FILE`: appends every signed request it accepted as `{"sig":…,"body":…}`, so a
  test can replay one.

Prints `{"port": P}` once it listens.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_AGE = 300


def parse_signature(header):
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    return int(parts["t"]), parts["v1"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--secret", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--control")
    ap.add_argument("--requests")
    args = ap.parse_args()

    lock = threading.Lock()
    seen_ids = set()
    seen_sigs = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                if line.strip():
                    seen_ids.add(json.loads(line)["id"])

    def mode():
        if not args.control:
            return ""
        try:
            with open(args.control) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, code, text):
            body = json.dumps({"status": text}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            header = self.headers.get("X-Roomcast-Signature")
            if args.secret:
                if not header:
                    return self.answer(401, "unsigned")
                try:
                    t, v1 = parse_signature(header)
                except (KeyError, ValueError):
                    return self.answer(401, "bad signature header")
                mac = hmac.new(args.secret.encode(), f"{t}.".encode() + body, hashlib.sha256)
                if not hmac.compare_digest(mac.hexdigest(), v1):
                    return self.answer(401, "bad signature")
                if abs(time.time() - t) > MAX_AGE:
                    return self.answer(400, "stale")
                with lock:
                    if v1 in seen_sigs:
                        return self.answer(400, "replay")
                    seen_sigs.add(v1)
            m = mode()
            if m.startswith("max:") and len(body) > int(m[4:]):
                return self.answer(413, "too large")
            if m == "refuse":
                return self.answer(500, "refused for now")
            try:
                events = json.loads(body)["events"]
            except (ValueError, KeyError, TypeError):
                return self.answer(400, "not a batch")
            now = int(time.time() * 1000)
            with lock:
                with open(args.out, "a") as f:
                    for e in events:
                        if e["id"] in seen_ids:
                            continue
                        seen_ids.add(e["id"])
                        e["_at"] = now
                        f.write(json.dumps(e) + "\n")
                if args.requests and header:
                    with open(args.requests, "a") as f:
                        f.write(json.dumps({"sig": header, "body": body.decode()}) + "\n")
            if m == "500":
                return self.answer(500, "took them, but says it failed")
            self.answer(200, "ok")

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
