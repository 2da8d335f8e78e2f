"""The two hypothesis profiles of the conformance properties: bounded for CI, thorough for nightly.

Every example of a conformance property is one or more real requests to a real server, so the
budget is set per property (a cheap malformed-request property gets more examples than a
structured-output one) and the profile scales it:

- ``ci`` (default): each property's own example count, derandomized (the same examples on every
  run and on both servers, so CI is reproducible), no example database, no shrinking (a failure
  already prints its exact requests; shrinking against a server could take minutes), no deadline.
- ``nightly``: ten times the examples, random seeds, the example database (``.hypothesis/``)
  replays earlier failures first, shrinking to a minimal failing request.

Chosen with ``--vllm-conformance-profile`` (ini ``vllm_conformance_profile``, pyproject
``conformance_profile``) rather than hypothesis's own ``--hypothesis-profile``: that one applies to
every hypothesis test of the run (users' unit tests included), cannot scale per-property budgets,
and needs its profiles registered in a conftest before options are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pytest_vllm.errors import UsageError

if TYPE_CHECKING:
    import hypothesis


@dataclass(frozen=True)
class Profile:
    name: str
    scale: float  # multiplies each property's example budget
    derandomize: bool
    shrink: bool
    database: bool
    description: str

    def scaled(self, factor: float) -> Profile:
        """This profile with every budget multiplied by ``factor`` (a slow host class's: sizing.py)."""
        return self if factor == 1.0 else replace(self, scale=self.scale * factor)

    def examples(self, budget: int) -> int:
        return max(1, round(budget * self.scale))

    def settings(self, budget: int) -> hypothesis.settings:
        from hypothesis import HealthCheck, Phase, settings

        phases = [Phase.explicit, Phase.generate]
        if self.database:
            phases.insert(1, Phase.reuse)
        if self.shrink:
            phases += [Phase.target, Phase.shrink, Phase.explain]
        chosen = settings(
            max_examples=self.examples(budget),
            deadline=None,  # a request's latency depends on the machine, not on the property
            derandomize=self.derandomize,
            phases=phases,
            # examples are slow by nature (a server round trip); the fixtures are session-wide servers
            suppress_health_check=list(HealthCheck),
            print_blob=not self.derandomize,
        )
        return chosen if self.database else settings(chosen, database=None)


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", 1.0, derandomize=True, shrink=False, database=False,
                  description="bounded: each property's own budget, derandomized, no shrinking, no deadline"),
    "nightly": Profile("nightly", 10.0, derandomize=False, shrink=True, database=True,
                       description="thorough: 10x examples, random seeds, example database, shrinking"),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise UsageError(f"--vllm-conformance-profile must be one of {', '.join(PROFILES)}, not {name!r}") from None
