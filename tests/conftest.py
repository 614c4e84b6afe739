"""Hypothesis for the whole unit suite: no per-example deadline.

A deadline is a timed assertion: on a shared 2-core machine (and while the image under
test builds beside the unit tests: integration/conftest.py) an example that takes 250 ms
once is noise, not a fault. What the properties assert is what they compute."""

from hypothesis import settings

settings.register_profile("bgpspeaker", deadline=None)
settings.load_profile("bgpspeaker")
