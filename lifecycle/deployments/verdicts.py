"""Automatic verdicts on a release's candidate against its stable version.

(Interface; the statistics are filled in by verdicts' own change.)"""
from dataclasses import dataclass, field

from lifecycle.deployments.models import DeploymentError

DEFAULT_RULES = {"method": "sequential", "alpha": 0.05, "min_requests": 200}


@dataclass
class Result:
    verdict: str  # "pending" | "passed" | "failed"
    reason: str = ""
    numbers: dict = field(default_factory=dict)


def clean_rules(rules):
    out = {**DEFAULT_RULES, **(rules or {})}
    if out["method"] not in ("sequential", "threshold"):
        raise DeploymentError("A verdict's method is sequential or threshold.")
    return out


def evaluate(release):
    return Result("pending", "not evaluated yet")
