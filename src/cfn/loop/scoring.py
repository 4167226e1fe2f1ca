"""Gate and consensus: judging a loop's reports against the mode's threshold.

The score is the mean confidence over the *whole team*: an agent that failed
(crashed, hung, reported no usable confidence) contributes nothing, so it
pulls the mean down instead of being left out or given a default value. A
team of three with one crash passes a 0.75 gate only if the other two sum to
2.25 or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cfn.coordination.completion import CollectReport


@dataclass(frozen=True)
class Verdict:
    """One gate or consensus check."""

    kind: str  # "gate" or "consensus"
    threshold: float
    team: int
    reported: int
    failed: int
    score: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "team": self.team,
            "reported": self.reported,
            "failed": self.failed,
            "score": round(self.score, 6),
            "passed": self.passed,
        }

    def describe(self) -> str:
        word = "passed" if self.passed else "failed"
        extra = f", {self.failed} failed" if self.failed else ""
        missing = self.team - self.reported
        extra += f", {missing} missing" if missing > 0 else ""
        return (
            f"{self.kind} {word}: {self.score:.3f} vs {self.threshold:.2f} "
            f"({self.reported}/{self.team} reported{extra})"
        )


def judge(kind: str, report: CollectReport, team: int, threshold: float) -> Verdict:
    confidences = report.confidences
    score = sum(confidences) / team if team else 0.0
    return Verdict(
        kind=kind,
        threshold=threshold,
        team=team,
        reported=report.arrived,
        failed=len(report.failed),
        score=score,
        passed=bool(confidences) and score >= threshold,
    )
