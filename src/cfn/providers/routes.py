"""The route table: which model each provider serves, how to reach it, what follows it.

Layers, later wins: the seed's table (below), the providers file
(CFN_PROVIDERS_FILE, default ``<checkout>/.claude/providers.json``), then
PROVIDER_ROUTES. The file may also add keyless OpenAI-compatible providers
(a local Ollama or vLLM under another name), fallback chains and prices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from cfn.errors import ConfigError, RouteFormatError, UnknownProviderError
from cfn.providers.pricing import PriceTable, parse_price, parse_price_json
from cfn.providers.types import OFFLINE
from cfn.settings import Settings

Kind = Literal["openai", "anthropic", "offline"]
KINDS: tuple[str, ...] = ("openai", "anthropic", "offline")
PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")

#: The seed's PROVIDER_ROUTES, in its order.
SEED_ROUTES: tuple[str, ...] = (
    "zai:glm-4.6",
    "kimi:kimi-latest",
    "openrouter:anthropic/claude-3-5-sonnet",
    "max:anthropic/claude-3-opus-20240229",
    "anthropic:claude-3-5-sonnet-20241022",
    "gemini:gemini-2.0-flash-exp",
    "xai:grok-beta",
)
OFFLINE_MODEL = "cfn-offline-1"

#: Where a provider goes when it keeps failing (only providers with keys are tried).
DEFAULT_FALLBACKS: dict[str, tuple[str, ...]] = {
    "zai": ("kimi", "openrouter"),
    "kimi": ("zai", "openrouter"),
    "openrouter": ("anthropic",),
    "max": ("anthropic", "openrouter"),
    "anthropic": ("max", "openrouter"),
    "gemini": ("openrouter",),
    "xai": ("openrouter",),
}


@dataclass(frozen=True)
class Route:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True)
class ProviderSpec:
    """How to talk to one provider. ``key`` never appears in repr or logs."""

    name: str
    kind: Kind
    base_url: str
    #: Environment variables that may hold the key, in the order they are read.
    key_vars: tuple[str, ...] = ()
    key: SecretStr | None = field(default=None, repr=False)
    #: False for local servers (Ollama, vLLM) and offline: they cost nothing.
    paid: bool = True

    @property
    def needs_key(self) -> bool:
        return bool(self.key_vars) and self.paid

    @property
    def has_credentials(self) -> bool:
        return not self.needs_key or self.key is not None

    @property
    def key_hint(self) -> str:
        """Which variable to set, for messages: ``MOONSHOT_API_KEY (or KIMI_API_KEY)``."""
        if not self.key_vars:
            return "-"
        first, *rest = self.key_vars
        return first + (f" (or {' or '.join(rest)})" if rest else "")

    @property
    def is_offline(self) -> bool:
        return self.kind == "offline"


def _first(*keys: SecretStr | None) -> SecretStr | None:
    return next((k for k in keys if k is not None and k.get_secret_value()), None)


def builtin_specs(settings: Settings) -> dict[str, ProviderSpec]:
    s = settings
    zai_anthropic = s.zai_api_style == "anthropic"
    specs = [
        ProviderSpec(
            "zai",
            "anthropic" if zai_anthropic else "openai",
            s.zai_anthropic_base_url if zai_anthropic else s.zai_base_url,
            ("ZAI_API_KEY",),
            _first(s.zai_api_key),
        ),
        ProviderSpec(
            "kimi",
            "openai",
            s.kimi_base_url,
            ("MOONSHOT_API_KEY", "KIMI_API_KEY"),
            _first(s.moonshot_api_key, s.kimi_api_key),
        ),
        ProviderSpec(
            "openrouter",
            "openai",
            s.openrouter_base_url,
            ("OPENROUTER_API_KEY",),
            _first(s.openrouter_api_key),
        ),
        ProviderSpec(
            "max",
            "anthropic",
            s.max_base_url,
            ("MAX_API_KEY", "ANTHROPIC_API_KEY"),
            _first(s.max_api_key, s.anthropic_api_key),
        ),
        ProviderSpec(
            "anthropic",
            "anthropic",
            s.anthropic_base_url,
            ("ANTHROPIC_API_KEY",),
            _first(s.anthropic_api_key),
        ),
        ProviderSpec(
            "gemini", "openai", s.gemini_base_url, ("GEMINI_API_KEY",), _first(s.gemini_api_key)
        ),
        ProviderSpec("xai", "openai", s.xai_base_url, ("XAI_API_KEY",), _first(s.xai_api_key)),
        ProviderSpec("ollama", "openai", s.ollama_base_url, (), None, paid=False),
        ProviderSpec(
            "vllm", "openai", s.vllm_base_url, ("VLLM_API_KEY",), _first(s.vllm_api_key), False
        ),
        ProviderSpec(OFFLINE, "offline", "offline://", (), None, paid=False),
    ]
    return {spec.name: spec for spec in specs}


def validate_provider_name(name: object, source: str = "provider") -> str:
    if not isinstance(name, str) or PROVIDER_NAME.fullmatch(name) is None:
        raise RouteFormatError(
            f"invalid {source} {name!r}: use lowercase letters, digits, '-' or '_' (e.g. 'zai')"
        )
    return name


def parse_route(text: object) -> Route:
    """``provider:model``; the model may itself hold ``:`` or ``/`` (``ollama:llama3:8b``)."""
    if not isinstance(text, str) or ":" not in text:
        raise RouteFormatError(
            f"malformed route {text!r}: expected provider:model, e.g. 'zai:glm-4.6'"
        )
    provider, _, model = text.strip().partition(":")
    validate_provider_name(provider, f"provider in route {text!r}")
    if MODEL_NAME.fullmatch(model) is None:
        raise RouteFormatError(
            f"malformed route {text!r}: model {model!r} must be 1-200 characters of "
            "letters, digits and . _ - : / @ +"
        )
    return Route(provider, model)


def parse_fallbacks(
    text: str, source: str = "CFN_PROVIDER_FALLBACKS"
) -> dict[str, tuple[str, ...]]:
    """``zai=kimi,openrouter;kimi=zai`` (an empty right side means: no fallback)."""
    chains: dict[str, tuple[str, ...]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, rest = part.partition("=")
        if not sep:
            raise RouteFormatError(
                f"malformed fallback chain {part!r} in {source}: expected provider=next,next"
            )
        chains[validate_provider_name(name.strip(), f"provider in {source}")] = tuple(
            validate_provider_name(n.strip(), f"fallback in {source}")
            for n in rest.split(",")
            if n.strip()
        )
    return chains


@dataclass(frozen=True)
class RouteTable:
    routes: dict[str, Route]
    specs: dict[str, ProviderSpec]
    fallbacks: dict[str, tuple[str, ...]]
    prices: PriceTable
    #: Where the table came from, for ``cfn providers list``.
    sources: tuple[str, ...] = ()

    def route(self, provider: str, model: str | None = None) -> Route:
        """The route of ``provider`` (with ``model`` instead of its own, when given)."""
        if provider not in self.routes:
            known = ", ".join(sorted(self.routes))
            raise UnknownProviderError(
                f"unknown provider {provider!r}: known providers are {known}"
            )
        base = self.routes[provider]
        if model is not None:
            return replace(base, model=parse_route(f"{provider}:{model}").model)
        return base

    def spec(self, provider: str) -> ProviderSpec:
        self.route(provider)
        return self.specs[provider]

    def chain(self, first: Route) -> tuple[Route, ...]:
        """``first`` then its fallbacks (never the offline provider, unless it is ``first``)."""
        seen = {first.provider}
        chain = [first]
        for name in self.fallbacks.get(first.provider, ()):
            if name in seen or name == OFFLINE or name not in self.routes:
                continue
            seen.add(name)
            chain.append(self.routes[name])
        return tuple(chain)

    def real_providers_with_keys(self) -> list[str]:
        return [
            name
            for name, spec in self.specs.items()
            if name in self.routes and spec.paid and spec.has_credentials
        ]


def _config_file(settings: Settings) -> Path | None:
    if settings.cfn_providers_file is not None:
        if not settings.cfn_providers_file.is_file():
            raise ConfigError(f"CFN_PROVIDERS_FILE {settings.cfn_providers_file} does not exist")
        return settings.cfn_providers_file
    default = settings.project_root / ".claude" / "providers.json"
    return default if default.is_file() else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"providers file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"providers file {path}: expected a JSON object")
    unknown = set(data) - {"routes", "fallbacks", "prices", "providers"}
    if unknown:
        raise ConfigError(
            f"providers file {path}: unknown section(s) {sorted(unknown)}; "
            "use routes, fallbacks, prices, providers"
        )
    return data


def _routes_from(value: object, source: str) -> list[Route]:
    if isinstance(value, list):
        return [parse_route(item) for item in value]
    if isinstance(value, dict):
        return [parse_route(f"{k}:{v}") for k, v in value.items()]
    raise ConfigError(f"{source}: routes must be a list of 'provider:model' or an object")


def _custom_spec(name: str, value: object, source: str) -> ProviderSpec:
    if not isinstance(value, dict) or set(value) - {"kind", "base_url"} or "base_url" not in value:
        raise ConfigError(
            f'{source}: provider {name!r} must be {{"kind": "openai"|"anthropic", '
            '"base_url": "http://..."} (file-defined providers are keyless local servers)'
        )
    kind = value.get("kind", "openai")
    base_url = value["base_url"]
    if kind not in ("openai", "anthropic") or not isinstance(base_url, str):
        raise ConfigError(f"{source}: provider {name!r}: kind must be openai or anthropic")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: provider {name!r}: base_url must be http(s)://")
    return ProviderSpec(name, kind, base_url, (), None, paid=False)


def load_route_table(settings: Settings) -> RouteTable:
    """Build the table from the seed's routes, the providers file and PROVIDER_ROUTES."""
    specs = builtin_specs(settings)
    routes = {r.provider: r for r in map(parse_route, SEED_ROUTES)}
    routes[OFFLINE] = Route(OFFLINE, OFFLINE_MODEL)
    fallbacks = dict(DEFAULT_FALLBACKS)
    prices = PriceTable()
    sources = ["seed defaults"]

    path = _config_file(settings)
    if path is not None:
        data = _read_config(path)
        source = f"providers file {path}"
        for name, value in dict(data.get("providers") or {}).items():
            validate_provider_name(name, f"provider in {source}")
            if name in specs:
                raise ConfigError(f"{source}: provider {name!r} is built in; pick another name")
            specs[name] = _custom_spec(name, value, source)
        for route in _routes_from(data.get("routes") or [], source):
            routes[route.provider] = route
        for name, chain in dict(data.get("fallbacks") or {}).items():
            if not isinstance(chain, list):
                raise ConfigError(f"{source}: fallbacks of {name!r} must be a list")
            fallbacks[validate_provider_name(name)] = tuple(
                validate_provider_name(n, f"fallback in {source}") for n in chain
            )
        prices = prices.with_overrides(
            {str(m): parse_price(str(m), p) for m, p in dict(data.get("prices") or {}).items()}
        )
        sources.append(str(path))
    if settings.provider_routes:
        for route in map(parse_route, settings.provider_routes):
            routes[route.provider] = route
        sources.append("PROVIDER_ROUTES")
    if settings.cfn_provider_fallbacks:
        fallbacks.update(parse_fallbacks(settings.cfn_provider_fallbacks))
        sources.append("CFN_PROVIDER_FALLBACKS")
    if settings.cfn_price_table:
        prices = prices.with_overrides(
            parse_price_json(settings.cfn_price_table, "CFN_PRICE_TABLE")
        )
        sources.append("CFN_PRICE_TABLE")

    for route in routes.values():
        if route.provider not in specs:
            raise UnknownProviderError(
                f"route {route} names unknown provider {route.provider!r}: built-in providers "
                f'are {", ".join(sorted(specs))}; define others under "providers" in the '
                "providers file"
            )
    for name, chain in fallbacks.items():
        for item in chain:
            if item not in specs:
                raise UnknownProviderError(
                    f"fallback chain of {name!r} names unknown provider {item!r}"
                )
    return RouteTable(routes, specs, fallbacks, prices, tuple(sources))


def describe_specs(specs: Mapping[str, ProviderSpec]) -> list[str]:
    return [f"{s.name} ({s.kind}, {s.base_url})" for s in specs.values()]


#: Variables that hold a credential whatever provider they belong to.
SECRET_SUFFIXES = ("_API_KEY", "_AUTH_TOKEN")


def secret_variables(settings: Settings) -> frozenset[str]:
    """Every environment variable that may hold a provider key: agents never get these.

    The key variables of the built-in providers and of the providers file, plus
    any ``*_API_KEY`` / ``*_AUTH_TOKEN`` (a provider added later, an SDK's own);
    callers drop a variable when its name is here or has one of those endings.
    """
    names = {v for spec in builtin_specs(settings).values() for v in spec.key_vars}
    try:
        table = load_route_table(settings)
    except ConfigError:  # a broken providers file: the built-ins are still withheld
        return frozenset(names)
    names.update(v for spec in table.specs.values() for v in spec.key_vars)
    return frozenset(names)


def is_secret_variable(name: str, secrets: frozenset[str]) -> bool:
    upper = name.upper()
    return name in secrets or upper.endswith(SECRET_SUFFIXES)
