"""A webhook receiver for tests/webhooks.rs: HTTPS on loopback, signatures
verified with the `standardwebhooks` library (PyPI), each webhook-id
processed once.

    receiver.py PORT CERT KEY SECRETS_FILE LOG_FILE

SECRETS_FILE holds the endpoint's secrets, one `whsec_` per line, re-read
for every request (the test adds the rotated one). Never on argv.
Paths:
  /hook      verify (every secret alone must verify when the message has
             one signature per secret), then 204; the first time an id is
             seen it is "processed", later times are "duplicate".
  /gone      410.
  /redirect  302 to /target (a client that follows it would hit /target).
  /target    records a hit (must never happen).
Each request appends one JSON line to LOG_FILE.
"""

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT, CERT, KEY, SECRETS, LOG = sys.argv[1:6]
# Ids processed by an earlier run of this receiver (it is restarted).
seen = set()
try:
    with open(LOG) as f:
        for line in f:
            e = json.loads(line)
            if e.get("result") == "processed":
                seen.add(e["id"])
except FileNotFoundError:
    pass


def log(entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        msg_id = self.headers.get("webhook-id", "")
        entry = {"path": self.path, "id": msg_id}
        if self.path == "/gone":
            log(entry)
            return self.answer(410)
        if self.path == "/redirect":
            log(entry)
            return self.answer(302, [("Location", "/target")])
        if self.path != "/hook":
            log(entry)
            return self.answer(404)
        with open(SECRETS) as f:
            secrets = [line.strip() for line in f if line.strip()]
        sigs = self.headers.get("webhook-signature", "").split(" ")
        verified = []
        for s in secrets:
            try:
                payload = Webhook(s).verify(body, headers)
                verified.append(s[-6:])
            except WebhookVerificationError:
                pass
        entry.update(signatures=len(sigs), verified=len(verified))
        if not verified:
            entry["result"] = "bad signature"
            log(entry)
            return self.answer(401)
        entry["type"] = payload.get("type")
        entry["data"] = payload.get("data")
        if msg_id in seen:
            entry["result"] = "duplicate"
        else:
            seen.add(msg_id)
            entry["result"] = "processed"
        log(entry)
        self.answer(204)


server = ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
log({"path": "", "id": "", "result": "listening"})
server.serve_forever()
