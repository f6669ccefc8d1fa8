"""An application backend for tests/hooks.rs: answers roomcast's hooks (Python standard
library only) and counts what it was asked.

    python3 hook_backend.py PORT [--delay-ms N]

POST /connect  cookie `session=<user>` identifies the user; `session=banned` is refused
               with 403, no cookie with 401; a user named `cached-*` is answered with
               `cache_ttl` 30; `?autojoin=<room>` joins that room server-side.
POST /join     rooms named `private-*` are for `admin` only.
POST /publish  data containing "badword" is refused; `{"shout": text}` is published
               upper-cased; anything else as sent.
POST /rpc      `add` sums `data.a + data.b`; `fail` refuses with code 418; `echo` returns
               the data and the user.
GET  /stats    {"connect": n, "join": n, "publish": n, "rpc": n, "refresh": n,
                "max_inflight": n} — calls received so far.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

PORT = int(sys.argv[1])
DELAY = 0.0
if "--delay-ms" in sys.argv:
    DELAY = int(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000

lock = threading.Lock()
counts = {"connect": 0, "join": 0, "publish": 0, "rpc": 0, "refresh": 0}
inflight = 0
max_inflight = 0


def cookie_user(headers):
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "session" and value:
            return value
    return None


def connect(body):
    user = cookie_user(body.get("headers", {}))
    if user is None:
        return 401, {"error": {"reason": "log in first"}}
    if user == "banned":
        return 403, {"error": {"code": 403, "reason": "banned user"}}
    answer = {"user": user, "data": {"hello": user, "client": body.get("client", "")}}
    query = parse_qs(body.get("query", ""))
    if "autojoin" in query:
        answer["rooms"] = query["autojoin"]
    if user.startswith("cached-"):
        answer["cache_ttl"] = 30
    if user.startswith("expiring-"):
        answer["expire_at"] = int(time.time()) + 31
    return 200, answer


def join(body):
    if body["room"].startswith("private-") and body.get("user") != "admin":
        return 200, {"error": {"reason": "members only"}}
    return 200, {}


def publish(body):
    data = body["data"]
    if "badword" in json.dumps(data):
        return 200, {"error": {"reason": "watch your language"}}
    if isinstance(data, dict) and "shout" in data:
        return 200, {"data": {"shout": str(data["shout"]).upper(), "by": body.get("user")}}
    return 200, {}


def rpc(body):
    method, data = body["method"], body["data"]
    if method == "add":
        return 200, {"data": data["a"] + data["b"]}
    if method == "fail":
        return 200, {"error": {"code": 418, "reason": "teapot"}}
    if method == "echo":
        return 200, {"data": {"data": data, "user": body.get("user")}}
    return 200, {"error": {"code": 404, "reason": "no such method"}}


def refresh(body):
    return 200, {"user": body["user"], "expire_at": int(time.time()) + 31}


HANDLERS = {"connect": connect, "join": join, "publish": publish, "rpc": rpc}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        out = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        with lock:
            stats = dict(counts, max_inflight=max_inflight)
        self.reply(200, stats)

    def do_POST(self):
        global inflight, max_inflight
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = body["kind"]
        with lock:
            counts[kind] += 1
            inflight += 1
            max_inflight = max(max_inflight, inflight)
        try:
            if DELAY:
                time.sleep(DELAY)
            handler = refresh if kind == "refresh" else HANDLERS[kind]
            status, answer = handler(body)
        finally:
            with lock:
                inflight -= 1
        self.reply(status, answer)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


server = Server(("127.0.0.1", PORT), Handler)
print("listening", flush=True)
server.serve_forever()
