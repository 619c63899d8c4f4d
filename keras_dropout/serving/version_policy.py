"""Which version to load or unload next: TF Serving's AvailabilityPreservingPolicy.

TF Serving's manager asks an `AspiredVersionPolicy` for the next action given a snapshot of
every version it knows of (`aspired_version_policy.h`); the policy is a pure function of that
snapshot, so it is stateless and idempotent: asking twice without acting in between gives the
same answer, and acting on each answer in turn reaches a fixed point where it answers None.
`ModelManager` (servables.py) calls `next_action` after every poll and every finished load.

The availability-preserving policy (TF Serving's default):
- unload first: the lowest version that is not aspired but still AVAILABLE, provided no version
  is aspired, or an aspired one is AVAILABLE, or more than one unaspired version is serving (so
  a new version that has not loaded yet, or failed, never leaves the model without a version);
  versions the config names explicitly (`specific` policy) are never unloaded this way;
- else load the highest aspired version that is NEW.

```python
versions = [VersionState(1, "AVAILABLE", aspired=False), VersionState(2, "NEW", aspired=True)]
next_action(versions)      # Action("load", 2): version 1 keeps serving until 2 is available
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

# A version's life, as TF Serving's LoaderHarness states (NEW shows as START in status).
STATES = ("NEW", "LOADING", "AVAILABLE", "UNLOADING", "END")


@dataclasses.dataclass(frozen=True)
class VersionState:
    """One version as the policy sees it.

    Args:
        version: the version number.
        state: one of `STATES`.
        aspired: whether the model's version policy wants it (it is on disk and selected).
    """

    version: int
    state: str
    aspired: bool

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(
                f"Invalid value received for argument `state`. Expected one of {STATES}. "
                f"Received: state={self.state!r}"
            )


@dataclasses.dataclass(frozen=True)
class Action:
    """What the manager should do next: `kind` is "load" or "unload"."""

    kind: str
    version: int


def next_action(
    versions: Sequence[VersionState], keep: Collection[int] = ()
) -> Action | None:
    """The next load or unload for one model under the availability-preserving policy.

    Args:
        versions: every version the manager tracks for the model.
        keep: versions named by a `specific` version policy, never unloaded by this rule.

    Returns:
        An `Action`, or None when nothing is to be done.
    """
    aspired = [v for v in versions if v.aspired]
    aspired_serving = any(v.state == "AVAILABLE" for v in aspired)
    unaspired_serving = [v for v in versions if not v.aspired and v.state == "AVAILABLE"]
    if not aspired or aspired_serving or len(unaspired_serving) > 1:
        if unaspired_serving:
            lowest = min(unaspired_serving, key=lambda v: v.version)
            if lowest.version not in keep:
                return Action("unload", lowest.version)
    new = [v for v in aspired if v.state == "NEW"]
    if new:
        return Action("load", max(new, key=lambda v: v.version).version)
    return None
