"""Cost per call from a per-model price table (USD per million tokens).

The defaults are list prices for the seed's routes as published by each
vendor at the time of writing; they drift, so every entry can be overridden by
CFN_PRICE_TABLE or the providers file's ``prices``. A paid provider whose
model has no price is an error, not a silent $0: a budget that cannot count
is no budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from cfn.errors import ConfigError, UnknownProviderError
from cfn.providers.types import Usage


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


FREE = Price(0.0, 0.0)

DEFAULT_PRICES: dict[str, Price] = {
    "glm-4.6": Price(0.60, 2.20),
    "kimi-latest": Price(2.00, 5.00),
    "anthropic/claude-3-5-sonnet": Price(3.00, 15.00),
    "anthropic/claude-3-opus-20240229": Price(15.00, 75.00),
    "claude-3-5-sonnet-20241022": Price(3.00, 15.00),
    "claude-3-opus-20240229": Price(15.00, 75.00),
    "gemini-2.0-flash-exp": Price(0.10, 0.40),
    "grok-beta": Price(5.00, 15.00),
}


def parse_price(model: str, value: object) -> Price:
    """``[in, out]`` or ``{"input": in, "output": out}``, USD per million tokens."""
    pair: tuple[object, object]
    if isinstance(value, list | tuple) and len(value) == 2:
        pair = (value[0], value[1])
    elif isinstance(value, Mapping) and {"input", "output"} <= set(value):
        pair = (value["input"], value["output"])
    else:
        raise ConfigError(
            f"price for {model!r} must be [input, output] or "
            '{"input": .., "output": ..} in USD per million tokens'
        )
    numbers: list[float] = []
    for item in pair:
        if (
            isinstance(item, bool)
            or not isinstance(item, int | float)
            or not math.isfinite(item)
            or item < 0
        ):
            raise ConfigError(f"price for {model!r}: {item!r} is not a number >= 0")
        numbers.append(float(item))
    return Price(numbers[0], numbers[1])


def parse_price_json(text: str, source: str) -> dict[str, Price]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a JSON object of model -> [input, output]")
    return {str(k): parse_price(str(k), v) for k, v in data.items()}


class PriceTable:
    """Looks a model up as ``provider:model``, then ``model``, then without ``vendor/``."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)

    def with_overrides(self, overrides: Mapping[str, Price]) -> PriceTable:
        return PriceTable({**self._prices, **overrides})

    def find(self, provider: str, model: str) -> Price | None:
        for key in (f"{provider}:{model}", model, model.rpartition("/")[2]):
            if key in self._prices:
                return self._prices[key]
        return None

    def price(self, provider: str, model: str, *, paid: bool) -> Price:
        found = self.find(provider, model)
        if found is not None:
            return found
        if not paid:
            return FREE
        raise UnknownProviderError(
            f"no price for model {model!r} of provider {provider!r}: add it to CFN_PRICE_TABLE "
            f'(e.g. {{"{model}": [input_usd, output_usd]}} per million tokens) or to "prices" '
            "in the providers file"
        )

    def items(self) -> list[tuple[str, Price]]:
        return sorted(self._prices.items())
