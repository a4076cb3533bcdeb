"""Shared test configuration: the Hypothesis profiles.

The profile is chosen with ``HYPOTHESIS_PROFILE`` (``ci`` by default, ``dev`` for a quick
loop, ``thorough`` before a release). Deadlines are off: the first run of a node compiles
it, which makes timings of single examples noisy on a loaded machine.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
