"""The CFN Loop's modes and thresholds (DESIGN.md).

| mode | gate | consensus | max iterations | implementers | validators |
|---|---|---|---|---|---|
| mvp | 0.70 | 0.80 | 5 | 2 | 2 |
| standard | 0.75 | 0.90 | 10 | 3 | 3 |
| enterprise | 0.85 | 0.95 | 15 | 5 | 5 |
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cfn.errors import InvalidInputError

MAX_TEAM = 50
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class Mode:
    name: str
    gate: float
    consensus: float
    max_iterations: int
    implementers: int
    validators: int

    def with_team(
        self,
        implementers: int | None = None,
        validators: int | None = None,
        max_iterations: int | None = None,
    ) -> Mode:
        """This mode with the team sizes (and iteration cap) overridden for one run."""
        for what, value, top in (
            ("implementers", implementers, MAX_TEAM),
            ("validators", validators, MAX_TEAM),
            ("max iterations", max_iterations, MAX_ITERATIONS),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top
            ):
                raise InvalidInputError(f"{what} must be from 1 to {top}, got {value!r}")
        return replace(
            self,
            implementers=implementers or self.implementers,
            validators=validators or self.validators,
            max_iterations=max_iterations or self.max_iterations,
        )


MODES: dict[str, Mode] = {
    "mvp": Mode("mvp", 0.70, 0.80, 5, 2, 2),
    "standard": Mode("standard", 0.75, 0.90, 10, 3, 3),
    "enterprise": Mode("enterprise", 0.85, 0.95, 15, 5, 5),
}


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise InvalidInputError(f"unknown mode {name!r}; use one of {', '.join(MODES)}") from None
