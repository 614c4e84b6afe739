"""Every reason code a Service can be given, in one place: refusals, skips and warnings.

A reason code is what a user greps for: `plan` and `explain` print it, the daemon logs it
and turns it into the Event reason (communityNotAllowed → CommunityNotAllowed), `/status`
lists it. Declaring them in one module keeps the vocabulary from drifting between the
allocator, which refuses an address, and the planner, which skips a route; the
allocator's refusal reasons pass through the planner unchanged. The words follow
MetalLB's where it has one.
"""

from __future__ import annotations

# --- the allocator's refusals: why a Service got no (or not that) address --------------

INVALID_IP = "invalidIP"
INVALID_IP_FAMILY = "invalidIPFamily"
IP_FAMILY_MISMATCH = "ipFamilyMismatch"
INVALID_PORT = "invalidPort"
UNKNOWN_POOL = "unknownPool"
POOL_NOT_ALLOWED = "poolNotAllowedForNamespace"
NOT_IN_POOL = "notInPool"
DIFFERENT_POOLS = "differentPools"
BUGGY_IP = "buggyIP"
IP_IN_USE = "ipInUse"
SHARING_KEY_MISMATCH = "sharingKeyMismatch"
PORT_CONFLICT = "portConflict"
POOL_EXHAUSTED = "poolExhausted"
NO_POOL_FOR_FAMILY = "noPoolForFamily"
DUAL_STACK_UNAVAILABLE = "dualStackUnavailable"
INVALID_SHARING_KEY = "invalidSharingKey"  # records mode: a sharing key that cannot name a record
STATUS_IGNORED = "statusIgnored"  # records mode: a status address that is not the Service's record

REFUSALS = (
    INVALID_IP,
    INVALID_IP_FAMILY,
    IP_FAMILY_MISMATCH,
    INVALID_PORT,
    UNKNOWN_POOL,
    POOL_NOT_ALLOWED,
    NOT_IN_POOL,
    DIFFERENT_POOLS,
    BUGGY_IP,
    IP_IN_USE,
    SHARING_KEY_MISMATCH,
    PORT_CONFLICT,
    POOL_EXHAUSTED,
    NO_POOL_FOR_FAMILY,
    DUAL_STACK_UNAVAILABLE,
    INVALID_SHARING_KEY,
    STATUS_IGNORED,
)

# --- the planner's skips: why this node does not announce a Service ------------------

NOT_ALLOCATED = "notAllocated"
ALLOCATION_PENDING = "allocationPending"  # records mode: waiting for its allocation record
INVALID_PREFERENCE = "invalidPreference"
NOT_LISTED = "notListedInPreference"
NO_DEFAULT_TIER = "noDefaultTier"
NODE_NOT_FOUND = "nodeNotFound"
NODE_NOT_READY = "nodeNotReady"
NODE_EXCLUDED = "nodeExcluded"
NO_LOCAL_ENDPOINTS = "noLocalEndpoints"
NO_ENDPOINTS = "noEndpoints"
NO_NODE_ADDRESS = "noNodeAddress"
INVALID_NEXT_HOP = "invalidNextHop"
NO_PEERS = "noPeers"

SKIPS = (
    NOT_ALLOCATED,
    ALLOCATION_PENDING,
    NOT_IN_POOL,
    POOL_NOT_ALLOWED,
    INVALID_PREFERENCE,
    NOT_LISTED,
    NO_DEFAULT_TIER,
    NODE_NOT_FOUND,
    NODE_NOT_READY,
    NODE_EXCLUDED,
    NO_LOCAL_ENDPOINTS,
    NO_ENDPOINTS,
    NO_NODE_ADDRESS,
    INVALID_NEXT_HOP,
    NO_PEERS,
)
# Skips decided without looking at the node (noEndpoints counts the whole cluster's
# endpoints): a Service skipped for one of them on one node is announced by no node. The
# offline audit stops planning more nodes on them.
CLUSTER_WIDE = (INVALID_PREFERENCE, NOT_LISTED, NO_DEFAULT_TIER, NO_ENDPOINTS)

# --- the planner's warnings: the route is still announced (without the offending community, or
# with the tier's own hysteresis values)

INVALID_COMMUNITY = "invalidCommunity"
COMMUNITY_NOT_ALLOWED = "communityNotAllowed"
INVALID_THRESHOLD = "invalidThreshold"  # a hysteresis annotation that does not parse: the tier's value is used

WARNINGS = (INVALID_COMMUNITY, COMMUNITY_NOT_ALLOWED, INVALID_THRESHOLD)


def event_reason(reason_code: str) -> str:
    """A reason code (communityNotAllowed) as an Event reason (CommunityNotAllowed), as Kubernetes spells them."""
    return reason_code[:1].upper() + reason_code[1:]
