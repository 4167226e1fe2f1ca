"""Agents: profiles (and, in later issues, CLI context, spawners, the runtime)."""

from cfn.agents.profiles import AgentProfile, ProfileSet, load_profiles

__all__ = ["AgentProfile", "ProfileSet", "load_profiles"]
