"""Everything that talks to ExaBGP 5.0.15: config rendering, command text, the relay, the channel, the child.

See docs/reference/exabgp-api.md for the measured behaviour every module here relies on.
"""
