"""What cfn needs from the operating system: processes, cgroups, limits, daemons.

Kept free of cfn's dependencies (and of ``typing`` in the modules the agent
supervisor imports), because ``cfn.agents.shim`` loads ``proc`` and
``cgroups`` once per agent, with ``python -I -S``.
"""
