"""A tiny OpenAI-compatible completions server on loopback, streaming one chunk per token."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(token_delay_s: float, fail_every: int, short_by: int, error_in_stream: bool):
    counter = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code: int, body: bytes, kind="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, json.dumps({"data": [{"id": "fake-qwen"}]}).encode())
            else:
                self._send(404, b"{}")

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                counter["n"] += 1
                n = counter["n"]
            if fail_every and n % fail_every == 0:
                self._send(500, b'{"error": "boom"}')
                return
            assert request["stream"] and request["ignore_eos"] and isinstance(request["prompt"], list)
            tokens = request["max_tokens"] - short_by
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if error_in_stream:
                self.wfile.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\ndata: [DONE]\n\n')
                self.wfile.flush()
                self.close_connection = True
                return
            for _ in range(tokens):
                time.sleep(token_delay_s)
                chunk = {"choices": [{"index": 0, "text": "x"}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            usage = {"choices": [], "usage": {"prompt_tokens": len(request["prompt"]), "completion_tokens": tokens}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def fake_server(token_delay_s=0.002, fail_every=0, short_by=0, error_in_stream=False):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(token_delay_s, fail_every, short_by, error_in_stream))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
