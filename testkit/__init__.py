"""Helpers shared by the two test trees (tests/ and integration/): no tests here.

Neither tree imports the other; what both need lives in this package.
"""
