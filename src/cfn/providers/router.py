"""Provider selection: the seed's ``ProviderRouter.selectProvider``, with reasons.

With CFN_CUSTOM_ROUTING=true the order is the seed's: the agent profile's
provider, else HIGH_COMPLEXITY_PROVIDER (default anthropic) for a
high-complexity task, else COST_PROVIDER (default zai) for a cost-sensitive
one, else DEFAULT_PROVIDER (default kimi). Without it, as the seed's
"Enable custom routing" implies, every agent goes to DEFAULT_PROVIDER.

The offline provider is only used when it is chosen by name, or when *no*
real provider has a key (and CFN_OFFLINE_WHEN_NO_KEYS is on). A chosen
provider without a key while another has one is an error naming the
variable to set, never a quiet switch to canned output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cfn.errors import InvalidInputError, MissingCredentialsError
from cfn.profiles import MODEL_TIERS, AgentProfile, ProfileSet
from cfn.providers.routes import Route, RouteTable, validate_provider_name
from cfn.providers.types import COMPLEXITIES, OFFLINE, TaskTraits
from cfn.settings import Settings


@dataclass(frozen=True)
class Decision:
    """Which route serves an agent's call, and why."""

    agent_id: str
    route: Route
    #: The route, then its fallbacks, in the order they will be tried.
    chain: tuple[Route, ...]
    #: One line per step of the selection, in order.
    reasons: tuple[str, ...]
    profile: AgentProfile | None = None
    #: Set when the chosen provider cannot be called: the message to raise.
    problem: str | None = field(default=None)

    @property
    def provider(self) -> str:
        return self.route.provider

    @property
    def model(self) -> str:
        return self.route.model

    @property
    def offline(self) -> bool:
        return self.route.provider == OFFLINE

    @property
    def label(self) -> str:
        return str(self.route) + (" (OFFLINE, no model called)" if self.offline else "")

    def explain(self) -> str:
        return "\n".join(self.reasons)

    def require_callable(self) -> None:
        if self.problem is not None:
            raise MissingCredentialsError(self.problem)


def check_task(task: TaskTraits) -> TaskTraits:
    if task.complexity is not None and task.complexity not in COMPLEXITIES:
        raise InvalidInputError(
            f"invalid complexity {task.complexity!r}: use one of {', '.join(COMPLEXITIES)}"
        )
    return task


def select_provider(
    agent_id: str,
    task: TaskTraits,
    *,
    settings: Settings,
    table: RouteTable,
    profiles: ProfileSet,
    provider: str | None = None,
    model: str | None = None,
) -> Decision:
    """Pick the route for ``agent_id`` on ``task``; ``provider`` overrides everything."""
    check_task(task)
    reasons: list[str] = []
    profile = profiles.get(agent_id)
    use_profile_model = False

    if provider is not None:
        chosen = validate_provider_name(provider)
        reasons.append(f"provider {chosen!r} was chosen explicitly")
    elif not settings.cfn_custom_routing:
        chosen = validate_provider_name(settings.default_provider, "DEFAULT_PROVIDER")
        reasons.append(
            "custom routing is off (CFN_CUSTOM_ROUTING is not true): every agent uses "
            f"DEFAULT_PROVIDER={chosen}"
        )
    elif profile is not None and profile.provider:
        chosen = profile.provider
        use_profile_model = True
        reasons.append(f"agent profile {profile.id!r} names provider {chosen!r}")
    else:
        if profile is None:
            reasons.append(f"no agent profile matches {agent_id!r}; routing by task")
        else:
            reasons.append(f"agent profile {profile.id!r} names no provider; routing by task")
        if task.complexity == "high":
            chosen = validate_provider_name(
                settings.high_complexity_provider, "HIGH_COMPLEXITY_PROVIDER"
            )
            reasons.append(f"task complexity is high: HIGH_COMPLEXITY_PROVIDER={chosen}")
        elif task.cost_sensitive:
            chosen = validate_provider_name(settings.cost_provider, "COST_PROVIDER")
            reasons.append(f"task is cost-sensitive: COST_PROVIDER={chosen}")
        else:
            chosen = validate_provider_name(settings.default_provider, "DEFAULT_PROVIDER")
            reasons.append(f"no other rule applies: DEFAULT_PROVIDER={chosen}")

    chosen_model = model
    if chosen_model is None and use_profile_model and profile is not None and profile.model:
        if profile.model in MODEL_TIERS:
            # A Claude Code subagent file's tier (``model: sonnet``) names no model of
            # the provider the profile routes to: the route table's model serves it.
            reasons.append(
                f"model tier {profile.model!r} of profile {profile.id!r} is Claude Code's, "
                f"not a model of {chosen!r}"
            )
        else:
            chosen_model = profile.model
    route = table.route(chosen, chosen_model)
    if chosen_model is not None and model is None:
        reasons.append(f"model {route.model!r} from the agent profile")
    elif model is not None:
        reasons.append(f"model {route.model!r} was chosen explicitly")
    else:
        reasons.append(f"model {route.model!r} from the route table")

    spec = table.spec(route.provider)
    problem: str | None = None
    if not spec.has_credentials:
        with_keys = table.real_providers_with_keys()
        if not with_keys and settings.cfn_offline_when_no_keys and provider is None:
            reasons.append(
                f"{spec.key_hint} is not set and no real provider has a key: using the OFFLINE "
                "provider (deterministic stand-in, no model is called); set a key to use a "
                "real model"
            )
            route = table.route(OFFLINE)
        else:
            problem = f"provider {route.provider!r} needs an API key: set {spec.key_hint}" + (
                f" (providers with keys: {', '.join(with_keys)})" if with_keys else ""
            )
            reasons.append(problem)

    chain = table.chain(route)
    if len(chain) > 1:
        reasons.append("fallbacks: " + " -> ".join(str(r) for r in chain[1:]))
    return Decision(agent_id, route, chain, tuple(reasons), profile, problem)
