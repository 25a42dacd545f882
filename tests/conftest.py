"""Shared test settings: hypothesis profiles chosen by the HYPOTHESIS_PROFILE environment variable.

    ci      (default) 75 examples per property and kind: test_properties.py runs in under a minute on 2 cores
    medium  300 examples per property and kind (about 3 minutes on 2 cores), before committing a change to the core
    long    10,000 examples per property and kind, for a release or a night run (hours):
            HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_properties.py
"""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # the strategies in tests/conversations.py import as `conversations`

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large], "print_blob": True}
settings.register_profile("ci", max_examples=75, **_COMMON)
settings.register_profile("medium", max_examples=300, **_COMMON)
settings.register_profile("long", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
