"""A tiny stand-in for the Kubernetes API: the two calls leaderd makes, recorded.

It speaks just enough of the API (pod PATCH, event POST) for the real `kubernetes`
client; it is not a Redis stand-in. Failures can be switched on to test retries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeKube:
    def __init__(self, on_request: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.labels: dict[str, dict[str, str]] = {}
        self.fail = False
        self.on_request = on_request
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _reply(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                call = {"method": method, "path": self.path, "body": body, "at": time.monotonic(),
                        "content_type": self.headers.get("Content-Type")}  # fmt: skip
                if fake.on_request is not None:
                    fake.on_request(self.path, call)
                fake.calls.append(call)
                if fake.fail:
                    self._reply(500, {"kind": "Status", "status": "Failure", "code": 500})
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                # /api/v1/namespaces/{ns}/pods/{name}  or  /api/v1/namespaces/{ns}/events
                if method == "PATCH" and len(parts) == 6 and parts[4] == "pods":
                    ns, name = parts[3], parts[5]
                    labels = fake.labels.setdefault(f"{ns}/{name}", {})
                    labels.update(body.get("metadata", {}).get("labels", {}))
                    self._reply(
                        200,
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {
                                "name": name,
                                "namespace": ns,
                                "uid": "uid-1",
                                "labels": labels,
                            },
                        },
                    )
                elif method == "POST" and len(parts) == 5 and parts[4] == "events":
                    self._reply(201, {**body, "metadata": {**body.get("metadata", {}),
                                                           "name": "ev-1"}})  # fmt: skip
                else:
                    self._reply(404, {"kind": "Status", "code": 404})

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))  # fmt: skip
        return path

    def label_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] == "PATCH"]

    def events(self) -> list[dict[str, Any]]:
        return [c["body"] for c in self.calls if c["method"] == "POST" and not self.fail]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
