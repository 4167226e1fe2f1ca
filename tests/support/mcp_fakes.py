"""Local HTTP servers for the MCP tests: a web page for the browser, and a stand-in
for n8n speaking exactly the endpoints the N8N server uses:

- ``POST|GET /webhook/{path}`` and ``/webhook-test/{path}`` (a workflow's webhook trigger)
- ``GET /api/v1/executions`` (``workflowId``, ``status``, ``limit``, ``cursor``)
- ``GET /api/v1/executions/{id}`` (``includeData``)
- ``GET /api/v1/workflows`` (``active``, ``limit``)

The API answers 401 without the right ``X-N8N-API-KEY``, as n8n does.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE = """<!doctype html>
<html><head><title>cfn test page</title></head>
<body>
<h1 id="headline">Hello from the test server</h1>
<p id="status">waiting</p>
<input id="name" type="text">
<button id="go" onclick="document.getElementById('status').textContent =
  'hello ' + document.getElementById('name').value">Go</button>
</body></html>
"""


def hostile_page(out: str) -> str:
    """Every way this page tries to reach ``out`` (host:port, not allow-listed): a
    fetch, an image, a redirect through the allowed server, a WebSocket from itself,
    and a WebSocket and a fetch from a ``data:`` frame and a ``blob:`` frame."""
    inner = (
        f"<script>new WebSocket('ws://{out}/from-data');"
        f"fetch('http://{out}/fetch-from-data').catch(() => 0)</script>"
    )
    return f"""<!doctype html>
<html><head><title>hostile</title></head><body>
<p id="status">tried</p>
<img src="http://{out}/img">
<img src="/redirect?to=http://{out}/redirected-img">
<iframe src="data:text/html,{inner.replace('"', "&quot;")}"></iframe>
<script>
fetch('http://{out}/fetch').catch(() => 0);
fetch('/redirect?to=http://{out}/redirected-fetch').catch(() => 0);
new WebSocket('ws://{out}/ws');
const blob = new Blob([{inner!r}], {{type: 'text/html'}});
const frame = document.createElement('iframe');
frame.src = URL.createObjectURL(blob);
document.body.appendChild(frame);
</script>
</body></html>
"""


@dataclass
class N8nState:
    api_key: str
    webhook_calls: list[dict[str, Any]] = field(default_factory=list)
    workflows: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"id": "wf1", "name": "Deploy preview", "active": True,
             "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-02T00:00:00.000Z",
             "nodes": [{"type": "n8n-nodes-base.webhook", "parameters": {"path": "deploy"}}]},
            {"id": "wf2", "name": "Nightly report", "active": False,
             "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z",
             "nodes": []},
        ]
    )  # fmt: skip
    executions: list[dict[str, Any]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path in ("/", "/page.html"):
            self._send(200, PAGE, "text/html; charset=utf-8")
            return
        if path == "/redirect":  # where ?to= says: the Playwright server's allow-list test
            self.send_response(302)
            self.send_header("Location", query.get("to", "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/hostile.html":  # a page that tries every way out to ?out=
            self._send(200, hostile_page(query.get("out", "")), "text/html; charset=utf-8")
            return
        state = self.server.n8n
        for prefix in ("/webhook/", "/webhook-test/"):
            if path.startswith(prefix):
                hook = path[len(prefix) :]
                if hook != "deploy":
                    self._send(404, {"code": 404, "message": f"webhook {hook} not registered"})
                    return
                body = self._body() if method == "POST" else query
                execution = {
                    "id": str(1000 + len(state.executions)), "finished": True, "mode": "webhook",
                    "status": "success", "workflowId": "wf1",
                    "startedAt": "2026-01-03T00:00:00.000Z",
                    "stoppedAt": "2026-01-03T00:00:01.000Z",
                    "data": {"resultData": {"runData": {"Webhook": [{"json": body}]}}},
                }  # fmt: skip
                state.executions.insert(0, execution)
                state.webhook_calls.append(
                    {"path": hook, "test": prefix == "/webhook-test/", "method": method,
                     "body": body, "agent": self.headers.get("X-Cfn-Agent-Id")}
                )  # fmt: skip
                self._send(200, {"message": "Workflow was started", "executionId": execution["id"]})
                return
        if not path.startswith("/api/v1/"):
            self._send(404, {"message": "not found"})
            return
        if self.headers.get("X-N8N-API-KEY") != state.api_key:
            self._send(401, {"message": "unauthorized"})
            return
        limit = int(query.get("limit", 100))
        if path == "/api/v1/executions":
            items = [
                {k: v for k, v in e.items() if k != "data"}
                for e in state.executions
                if query.get("workflowId") in (None, e["workflowId"])
                and query.get("status") in (None, e["status"])
            ]
            self._send(200, {"data": items[:limit], "nextCursor": None})
        elif path.startswith("/api/v1/executions/"):
            wanted = path.rsplit("/", 1)[1]
            for e in state.executions:
                if e["id"] == wanted:
                    keep = query.get("includeData") == "true"
                    self._send(200, e if keep else {k: v for k, v in e.items() if k != "data"})
                    return
            self._send(404, {"message": "Not Found"})
        elif path == "/api/v1/workflows":
            items = [
                w for w in state.workflows
                if "active" not in query or str(w["active"]).lower() == query["active"]
            ]  # fmt: skip
            self._send(200, {"data": items[:limit], "nextCursor": None})
        else:
            self._send(404, {"message": "not found"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    n8n: N8nState


class LocalWeb:
    """The test page and the n8n stand-in on one free loopback port."""

    def __init__(self, api_key: str) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.n8n = N8nState(api_key)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def n8n(self) -> N8nState:
        return self.httpd.n8n

    def start(self) -> LocalWeb:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
