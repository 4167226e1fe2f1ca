"""N8N (seed port 8083): trigger n8n workflows and read their executions.

Workflows are triggered through their webhook (``POST {N8N_URL}/webhook/{path}``,
or ``/webhook-test/{path}`` for a workflow open in the editor); executions and
workflows are read through n8n's public REST API (``/api/v1/executions``,
``/api/v1/executions/{id}``, ``/api/v1/workflows``) with ``X-N8N-API-KEY``.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from cfn.errors import McpServerError, McpToolError
from cfn.mcp.base import Call, Common, Tool, ToolOutput, ToolServer, schema
from cfn.settings import Settings

WEBHOOK_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,255}")
TIMEOUT = 30.0


def build(settings: Settings, common: Common) -> ToolServer:
    base = settings.n8n_url.rstrip("/")
    api_key = settings.n8n_api_key.get_secret_value() if settings.n8n_api_key else None
    client = httpx.AsyncClient(base_url=base, timeout=TIMEOUT)

    def api_headers() -> dict[str, str]:
        if api_key is None:
            raise McpServerError("N8N_API_KEY is not set: n8n's REST API needs it")
        return {"X-N8N-API-KEY": api_key, "Accept": "application/json"}

    async def api_get(path: str, params: dict[str, Any]) -> Any:
        try:
            reply = await client.get(path, params=params, headers=api_headers())
        except httpx.HTTPError as exc:
            raise McpServerError(f"n8n at {base} is unreachable: {exc}") from None
        if reply.status_code == 401:
            raise McpServerError("n8n refused the API key (401): check N8N_API_KEY")
        if reply.status_code == 404:
            raise McpToolError(f"n8n: not found ({path})")
        if reply.status_code >= 400:
            raise McpServerError(f"n8n answered {reply.status_code}: {reply.text[:300]}")
        return reply.json()

    async def trigger(call: Call, args: dict[str, Any]) -> ToolOutput:
        path = args["webhook_path"].strip("/")
        if WEBHOOK_PATH.fullmatch(path) is None or ".." in path.split("/"):
            raise McpToolError(f"invalid webhook path {args['webhook_path']!r}")
        prefix = "webhook-test" if args.get("test") else "webhook"
        method = args.get("method", "POST")
        payload = args.get("payload") or {}
        headers = {"X-Cfn-Agent-Id": call.claims.agent_id, "X-Cfn-Task-Id": call.claims.task_id}
        try:
            if method == "GET":
                reply = await client.get(f"/{prefix}/{path}", params=payload, headers=headers)
            else:
                reply = await client.post(f"/{prefix}/{path}", json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise McpServerError(f"n8n at {base} is unreachable: {exc}") from None
        if reply.status_code == 404:
            raise McpToolError(f"n8n has no active webhook {path!r} ({prefix})")
        try:
            body: Any = reply.json()
        except ValueError:
            body = reply.text[:10000]
        return ToolOutput(
            {"webhook_path": path, "status": reply.status_code, "ok": reply.is_success,
             "response": body}
        )  # fmt: skip

    async def executions(call: Call, args: dict[str, Any]) -> ToolOutput:
        params: dict[str, Any] = {"limit": args.get("limit", 20)}
        for name, param in (("workflow_id", "workflowId"), ("status", "status"),
                            ("cursor", "cursor")):  # fmt: skip
            if args.get(name):
                params[param] = args[name]
        data = await api_get("/api/v1/executions", params)
        return ToolOutput(
            {"executions": data.get("data", []), "next_cursor": data.get("nextCursor")}
        )

    async def execution(call: Call, args: dict[str, Any]) -> ToolOutput:
        data = await api_get(
            f"/api/v1/executions/{args['id']}",
            {"includeData": "true" if args.get("include_data") else "false"},
        )
        return ToolOutput({"execution": data})

    async def workflows(call: Call, args: dict[str, Any]) -> ToolOutput:
        params: dict[str, Any] = {"limit": args.get("limit", 50)}
        if "active" in args:
            params["active"] = "true" if args["active"] else "false"
        data = await api_get("/api/v1/workflows", params)
        slim = [
            {k: w.get(k) for k in ("id", "name", "active", "createdAt", "updatedAt")}
            for w in data.get("data", [])
        ]
        return ToolOutput({"workflows": slim, "next_cursor": data.get("nextCursor")})

    limit = {"type": "integer", "minimum": 1, "maximum": 250}
    exec_id = {"type": ["string", "integer"], "pattern": "^[0-9A-Za-z_-]{1,64}$"}
    tools = [
        Tool(
            "n8n_trigger_workflow", "trigger",
            "Trigger a workflow through its webhook path with a JSON payload.",
            schema({"webhook_path": {"type": "string", "minLength": 1, "maxLength": 256},
                    "payload": {"type": "object"}, "method": {"enum": ["POST", "GET"]},
                    "test": {"type": "boolean"}}, ("webhook_path",)),
            trigger, write=False,
        ),
        Tool(
            "n8n_list_executions", "executions",
            "List executions (newest first), optionally of one workflow or status.",
            schema({"workflow_id": {"type": "string", "maxLength": 64},
                    "status": {"enum": ["success", "error", "waiting", "canceled", "running"]},
                    "limit": limit, "cursor": {"type": "string", "maxLength": 512}}),
            executions,
        ),
        Tool(
            "n8n_get_execution", "execution", "One execution by id (with its data if asked).",
            schema({"id": exec_id, "include_data": {"type": "boolean"}}, ("id",)), execution,
        ),
        Tool(
            "n8n_list_workflows", "workflows", "List workflows (id, name, active).",
            schema({"active": {"type": "boolean"}, "limit": limit}), workflows,
        ),
    ]  # fmt: skip

    async def health() -> dict[str, Any]:
        return {"n8n_url": base, "api_key": api_key is not None}

    return ToolServer(
        "n8n", tools, authority=common.authority, mapping=common.mapping, audit=common.audit,
        shutdown=client.aclose, health=health,
    )  # fmt: skip
