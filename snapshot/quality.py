"""What a version's checks found, as its manifest records it, and where its statistics live.

The manifest's `checks` holds every failed, warned and skipped check (passed ones are counted), and
whether the version was published despite failures (`quiver load --accept-failed-checks`): the server
exports these as metrics, so an alert can fire on a forced version. Per-feature statistics are in
STATISTICS_FILE beside the manifest, which lists and checksums it like any data file.
"""

from dataclasses import dataclass, field
from typing import Any

STATISTICS_FILE = "statistics.json"


@dataclass(frozen=True)
class CheckResult:
    view: str
    feature: str          # "" for a view check
    check: str
    status: str           # passed | failed | warned | skipped
    measured: Any
    limit: Any
    examples: list[Any] = field(default_factory=list)   # a few offending entity keys
    detail: str = ""

    @property
    def where(self) -> str:
        return f"view {self.view!r}" + (f", feature {self.feature!r}" if self.feature else "")

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.where}: {self.check} skipped: {self.detail}"
        text = f"{self.where}: {self.check} {self.status}: measured {_show(self.measured)}, limit {_show(self.limit)}"
        if self.detail:
            text += f" ({self.detail})"
        if self.examples:
            text += f"; e.g. key(s) {', '.join(repr(k) for k in self.examples)}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"view": self.view, "feature": self.feature, "check": self.check, "status": self.status,
                "measured": self.measured, "limit": self.limit, "examples": self.examples, "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(d["view"], d["feature"], d["check"], d["status"], d.get("measured"), d.get("limit"),
                   list(d.get("examples", [])), d.get("detail", ""))


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and len(v) > 8:
        return repr(v[:8])[:-1] + ", ...]"
    return repr(v)


@dataclass
class CheckSummary:
    results: list[CheckResult] = field(default_factory=list)   # every result but the passed ones
    passed: int = 0
    accepted_failures: bool = False    # published although checks failed

    @classmethod
    def of(cls, results: list[CheckResult], accepted_failures: bool = False) -> "CheckSummary":
        return cls([r for r in results if r.status != "passed"], sum(r.status == "passed" for r in results),
                   accepted_failures)

    def with_status(self, status: str) -> list[CheckResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> int:
        return len(self.with_status("failed"))

    @property
    def warned(self) -> int:
        return len(self.with_status("warned"))

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "warned": self.warned,
                "skipped": len(self.with_status("skipped")),
                "accepted_failures": self.accepted_failures, "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "CheckSummary":
        if not d:
            return cls()
        return cls([CheckResult.from_json(r) for r in d.get("results", [])], int(d.get("passed", 0)),
                   bool(d.get("accepted_failures", False)))
