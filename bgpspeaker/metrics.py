"""The Prometheus metrics of docs/design.md §3.5, in one registry that components receive.

Components take a `Metrics` instead of touching module-level globals: two daemons (or
a test and a daemon) in one process then never share counters, and a test can read
exactly what one component counted. Names follow Prometheus conventions (counters end
in `_total`, gauges do not); the contract is the list in docs/design.md §3.5.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Event-to-ack spans one ExaBGP round trip (~1 ms) up to a slow API or a restart (seconds).
EVENT_TO_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.session_up = Gauge(
            "bgpspeaker_bgp_session_up", "1 when the BGP session to the peer is established", ["peer"], registry=r
        )
        self.announced_prefixes = Gauge(
            "bgpspeaker_bgp_announced_prefixes",
            "prefixes ExaBGP acknowledged as announced to the peer",
            ["peer"],
            registry=r,
        )
        self.updates_sent = Counter(
            "bgpspeaker_bgp_updates_sent",
            "announce/withdraw commands acknowledged by ExaBGP for the peer",
            ["peer"],
            registry=r,
        )
        self.service_announced = Gauge(
            "bgpspeaker_service_announced",
            "1 for each Service address this node announces, with its tier",
            ["namespace", "service", "ip", "tier"],
            registry=r,
        )
        self.allocator_addresses = Gauge(
            "bgpspeaker_allocator_addresses", "addresses in the pool", ["pool"], registry=r
        )
        self.allocator_in_use = Gauge(
            "bgpspeaker_allocator_addresses_in_use", "addresses of the pool assigned", ["pool"], registry=r
        )
        self.allocator_conflicts = Counter(
            "bgpspeaker_allocator_conflicts",
            "addresses refused because another identity holds them (its record)",
            ["pool"],
            registry=r,
        )
        self.allocator_pending = Gauge(
            "bgpspeaker_allocator_pending_services",
            "Services waiting for their allocation record (store unreachable or the record not read back yet)",
            registry=r,
        )
        self.event_to_ack = Histogram(
            "bgpspeaker_event_to_ack_seconds",
            "Kubernetes event received to ExaBGP acknowledgement of the resulting update",
            buckets=EVENT_TO_ACK_BUCKETS,
            registry=r,
        )
        self.exabgp_restarts = Counter("bgpspeaker_exabgp_restarts", "ExaBGP child restarts", registry=r)
        self.bfd_session_up = Gauge(
            "bgpspeaker_bfd_session_up", "1 when this node's BFD session to the peer is up", ["peer"], registry=r
        )
        self.bfd_transitions = Counter(
            "bgpspeaker_bfd_session_transitions",
            "BFD session state changes (up or down) toward the peer, bfdd restarts included",
            ["peer"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "bgpspeaker_kube_watch_restarts",
            "watch streams restarted (timeouts, errors, 410 relists)",
            ["resource"],
            registry=r,
        )
        self.config_reloads = Counter(
            "bgpspeaker_config_reloads", "config reloads by result (ok, invalid)", ["result"], registry=r
        )
