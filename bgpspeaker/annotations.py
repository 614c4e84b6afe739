"""The Service annotations and Node labels bgpspeaker reads, and the parsing of its own.

One home for the names, so a reader (or `grep`) finds every key the program honours in
one place; docs/design.md §3.3 is the user's table of them. Ours come first, then
MetalLB's, in precedence order, so Services migrating from MetalLB keep working.

Parsing an annotation is pure and strict: a ValueError names what is wrong, quoting the
untrusted text with `model.quote`, and the caller turns it into a reason code for that
Service only (docs/design.md invariant 6).
"""

from __future__ import annotations

import re

from bgpspeaker.model import TIERS_IN_ORDER, quote

# --- read by the allocator ---------------------------------------------------------------

REQUESTED_IPS_ANNOTATIONS = (
    "bgpspeaker.io/load-balancer-ips",
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
)
POOL_ANNOTATIONS = ("bgpspeaker.io/address-pool", "metallb.io/address-pool", "metallb.universe.tf/address-pool")
SHARING_ANNOTATIONS = (
    "bgpspeaker.io/allow-shared-ip",
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
)
ALLOCATED_FROM_POOL_ANNOTATION = "bgpspeaker.io/ip-allocated-from-pool"
# Written next to the status by the allocator's writer (and by MetalLB, for Services migrating
# from it): the evidence that a status address was handed out, not written by someone else.
ALLOCATED_FROM_POOL_ANNOTATIONS = (
    ALLOCATED_FROM_POOL_ANNOTATION,
    "metallb.io/ip-allocated-from-pool",
    "metallb.universe.tf/ip-allocated-from-pool",
)

# --- read by the planner -----------------------------------------------------------------

PREFERENCE_ANNOTATION = "bgpspeaker.io/cluster-preference"
COMMUNITIES_ANNOTATION = "bgpspeaker.io/communities"
MIN_READY_ANNOTATION = "bgpspeaker.io/min-ready-endpoints"  # tier hysteresis overrides (planner._health)
RISE_ANNOTATION = "bgpspeaker.io/rise-seconds"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"  # on a Node

# A cluster name in the preference list: a DNS-label-like token. Anything else (spaces
# inside, quotes, slashes...) is a typo we refuse rather than silently never match.
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")  # fullmatch, not "$"


def parse_preference(text: str) -> tuple[str, ...]:
    """`"east,west,central"` → ("east", "west", "central"); ValueError says what is wrong."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise ValueError(f"{quote(text)} has an empty cluster name")
    for name in names:
        if not _CLUSTER_NAME.fullmatch(name):
            raise ValueError(f"{quote(name)} is not a valid cluster name")
    if len(set(names)) != len(names):
        raise ValueError(f"{quote(text)} names a cluster twice")
    if len(names) > len(TIERS_IN_ORDER):
        raise ValueError(
            f"{quote(text)} names {len(names)} clusters; at most {len(TIERS_IN_ORDER)} (primary, secondary, tertiary)"
        )
    return tuple(names)


# --- what the cache keeps ------------------------------------------------------------------

# Every annotation named above. A Service's other annotations are never read, so the
# informer's views do not keep them: a tenant's 250 KB annotation would otherwise sit in
# every node's cache (issue 14). Anything under our own prefix is kept too, so a key added
# above without touching this list still reaches the planner.
READ_ANNOTATIONS = frozenset(
    (
        *REQUESTED_IPS_ANNOTATIONS,
        *POOL_ANNOTATIONS,
        *SHARING_ANNOTATIONS,
        *ALLOCATED_FROM_POOL_ANNOTATIONS,
        PREFERENCE_ANNOTATION,
        COMMUNITIES_ANNOTATION,
        MIN_READY_ANNOTATION,
        RISE_ANNOTATION,
    )
)
OUR_PREFIX = "bgpspeaker.io/"
# The longest value of ours worth keeping: a few hundred addresses or communities. A longer
# one is kept as a short placeholder that no parser accepts, so the Service gets a clear
# warning (the quote of it says how long it was) instead of megabytes in the cache.
MAX_VALUE_CHARS = 4096


def kept(annotations: dict[str, str]) -> dict[str, str]:
    """The annotations a view keeps: those read by the allocator or the planner, values capped."""
    result = {}
    for key, value in annotations.items():
        if key in READ_ANNOTATIONS or key.startswith(OUR_PREFIX):
            result[key] = value if len(value) <= MAX_VALUE_CHARS else too_long(value)
    return result


def too_long(value: str) -> str:
    return f"<{len(value)} characters: over the {MAX_VALUE_CHARS}-character limit>"  # no comma: one item
