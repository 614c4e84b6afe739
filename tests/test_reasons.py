"""The reason-code vocabulary (bgpspeaker/reasons.py): one spelling per code, and valid Event reasons."""

from __future__ import annotations

import re

from bgpspeaker import reasons


def test_every_code_is_declared_once_in_lower_camel_case_and_becomes_an_upper_camel_case_event_reason():
    codes = {name: value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)}
    assert len(set(codes.values())) == len(codes), "two names for one code"
    # every code belongs to a group: a refusal, a skip or a warning
    assert set(reasons.REFUSALS) | set(reasons.SKIPS) | set(reasons.WARNINGS) == set(codes.values())
    for code in codes.values():
        assert re.fullmatch(r"[a-z][A-Za-z]*", code), code
        assert re.fullmatch(r"[A-Z][A-Za-z]*", reasons.event_reason(code)), code
    assert reasons.event_reason("communityNotAllowed") == "CommunityNotAllowed"
    assert set(reasons.CLUSTER_WIDE) <= set(reasons.SKIPS)
