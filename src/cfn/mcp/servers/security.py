"""Security Scanner (seed port 8084): bandit and detect-secrets on the workspace.

A path is resolved (symlinks included) and must lie inside MCP_WORKSPACE (the
checkout by default); anything else is refused. The scanners themselves run in
a read-only sandbox without network (cfn.system.sandbox, per CFN_SANDBOX) that
holds the workspace and not cfn's state directory: a symlink an agent planted
in the workspace, pointing outside it, dangles there instead of being followed
(and a file swapped for one after the check finds nothing either). Findings come back as one
list of ``{tool, rule, severity, confidence, file, line, message}`` with file
paths relative to the workspace. detect-secrets reports a hash of each
secret, never the secret itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cfn.errors import McpForbiddenError, McpToolError
from cfn.mcp.base import Call, Common, Tool, ToolOutput, ToolServer, schema
from cfn.settings import Settings
from cfn.system.sandbox import Sandbox, SandboxUnavailableError, scrubbed, usable

SCANNERS = ("bandit", "detect-secrets")
SEVERITY_ORDER = {"HIGH": 0, "MEDIUM": 1, "LOW": 2, "UNDEFINED": 3}
MAX_FINDINGS = 2000


def split_target(target: Path) -> tuple[Path, str]:
    """Where to run a scanner and what to name: ``(dir, ".")`` or ``(parent, file name)``."""
    return (target, ".") if target.is_dir() else (target.parent, target.name)


def resolve_inside(workspace: Path, path: str) -> Path:
    """``path`` (relative to the workspace, or absolute) if it lies inside it, else 403."""
    if "\x00" in path:
        raise McpToolError("path must not contain NUL")
    root = workspace.resolve()
    candidate = (root / path).resolve()
    if candidate != root and root not in candidate.parents:
        raise McpForbiddenError(f"path {path!r} is outside the allowed workspace {root}; refused")
    if not candidate.exists():
        raise McpToolError(f"path {path!r} does not exist in the workspace")
    return candidate


async def _run(
    argv: list[str], cwd: Path, timeout: float, box: Sandbox | None
) -> tuple[int, bytes, bytes]:
    name = argv[2]
    if box is not None:
        argv = box.argv(argv, cwd=cwd)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=scrubbed(os.environ),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise McpToolError(f"{name} did not finish within {timeout:g} s") from None
    return proc.returncode or 0, out, err


def _rel(root: Path, file: str, base: Path) -> str:
    path = (base / file).resolve()
    with contextlib.suppress(ValueError):
        return path.relative_to(root).as_posix()
    return file


async def run_bandit(
    root: Path, target: Path, timeout: float, box: Sandbox | None = None
) -> list[dict[str, Any]]:
    base, arg = await asyncio.to_thread(split_target, target)
    code, out, err = await _run(
        [sys.executable, "-m", "bandit", "-r", "-f", "json", "-q", arg], base, timeout, box
    )
    try:
        report = json.loads(out)
    except ValueError:
        raise McpToolError(f"bandit failed (exit {code}): {err.decode()[-500:]}") from None
    return [
        {
            "tool": "bandit",
            "rule": f"{item.get('test_id')} {item.get('test_name')}",
            "severity": str(item.get("issue_severity", "UNDEFINED")).upper(),
            "confidence": str(item.get("issue_confidence", "UNDEFINED")).upper(),
            "file": _rel(root, item.get("filename", ""), base),
            "line": item.get("line_number"),
            "message": item.get("issue_text", ""),
            "cwe": (item.get("issue_cwe") or {}).get("id"),
        }
        for item in report.get("results", [])
    ]


async def run_detect_secrets(
    root: Path, target: Path, timeout: float, box: Sandbox | None = None
) -> list[dict[str, Any]]:
    base, arg = await asyncio.to_thread(split_target, target)
    code, out, err = await _run(
        [sys.executable, "-m", "detect_secrets", "scan", "--all-files", arg], base, timeout, box
    )
    try:
        report = json.loads(out)
    except ValueError:
        raise McpToolError(f"detect-secrets failed (exit {code}): {err.decode()[-500:]}") from None
    findings: list[dict[str, Any]] = []
    for file, items in (report.get("results") or {}).items():
        for item in items:
            findings.append(
                {
                    "tool": "detect-secrets",
                    "rule": item.get("type", "secret"),
                    "severity": "HIGH",
                    "confidence": "MEDIUM",
                    "file": _rel(root, file, base),
                    "line": item.get("line_number"),
                    "message": f"possible hard-coded secret ({item.get('type')})",
                    "hashed_secret": item.get("hashed_secret"),
                }
            )
    return findings


def build(settings: Settings, common: Common) -> ToolServer:
    workspace = (settings.mcp_workspace or settings.project_root).resolve()
    timeout = settings.mcp_scan_timeout

    def sandbox() -> Sandbox | None:
        if not usable(settings.cfn_sandbox):
            return None
        return Sandbox(workspace, read_only=True, hidden=(settings.state_dir.resolve(),))

    async def scan(call: Call, args: dict[str, Any]) -> ToolOutput:
        target = resolve_inside(workspace, args.get("path", "."))
        try:
            box = sandbox()
        except SandboxUnavailableError as exc:
            raise McpToolError(str(exc)) from None
        wanted = args.get("scanners") or list(SCANNERS)
        minimum = SEVERITY_ORDER[args.get("min_severity", "LOW")]
        jobs = []
        if "bandit" in wanted:
            jobs.append(run_bandit(workspace, target, timeout, box))
        if "detect-secrets" in wanted:
            jobs.append(run_detect_secrets(workspace, target, timeout, box))
        findings = [f for batch in await asyncio.gather(*jobs) for f in batch]
        findings = [f for f in findings if SEVERITY_ORDER.get(f["severity"], 3) <= minimum]
        findings.sort(key=lambda f: (SEVERITY_ORDER.get(f["severity"], 3), f["file"], f["line"]))
        counts: dict[str, int] = {}
        for finding in findings:
            counts[finding["severity"]] = counts.get(finding["severity"], 0) + 1
        return ToolOutput(
            {
                "path": target.relative_to(workspace).as_posix() or ".",
                "scanners": wanted,
                "counts": counts,
                "total": len(findings),
                "findings": findings[:MAX_FINDINGS],
                "truncated": len(findings) > MAX_FINDINGS,
            }
        )

    tools = [
        Tool(
            "security_scan",
            "scan",
            "Scan a file or directory of the workspace with bandit and detect-secrets; "
            "findings with severity, file and line.",
            schema(
                {
                    "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                    "scanners": {
                        "type": "array",
                        "items": {"enum": list(SCANNERS)},
                        "minItems": 1,
                        "uniqueItems": True,
                    },
                    "min_severity": {"enum": ["LOW", "MEDIUM", "HIGH"]},
                }
            ),
            scan,
        )
    ]

    async def health() -> dict[str, Any]:
        return {"workspace": str(workspace)}

    return ToolServer(
        "security-scanner",
        tools,
        authority=common.authority,
        mapping=common.mapping,
        audit=common.audit,
        health=health,
    )
