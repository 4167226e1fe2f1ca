"""Agents: the CLI context, the agent runtime and its tools, heartbeats, and the
runtimes that start agents (``cfn.agents.spawn``). Profiles live in ``cfn.profiles``.

Kept empty on purpose: ``python -m cfn.agents.shim`` runs once per agent, and
everything imported here would be paid by each of them.
"""
