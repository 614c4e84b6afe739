"""YAML to a validated Config, reporting every problem with its field path and line.

Why it works this way:
- An operator fixing a config wants all the problems at once, so nothing raises at the
  first error: rules append ConfigIssues and return INVALID, and the loader goes on.
  Only when no issue was found is a Config built; a bad file never yields a partial
  Config, which is what lets a live reload keep the last good one (docs/design.md invariant 6).
- The field rules read as tables (one row per YAML key: name, attribute, rule, required)
  so the accepted schema is visible in one place and unknown keys — typos — are errors
  with a suggestion, never silently ignored.
- Types are strict: `port: "179"` and `asn: true` are errors (bool is an int in Python,
  and YAML 1.1 reads yes/no/on/off as booleans). Strings are taken as written, see
  source.py for the YAML 1.1 traps that avoids.
- Cross-field checks (duplicates, overlaps, references) run on whatever fields were
  valid, so one bad field does not hide the other problems.

This file holds the schema tables, the checks across fields and the building of the
Config; the rules toolkit they are written with is rules.py, the value rules that know
BGP and Kubernetes are values.py. A new field is a row here and, if no rule fits, a rule
in values.py.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Optional, Union

from bgpspeaker.config.issues import ConfigError, ConfigIssue
from bgpspeaker.config.schema import (
    DEFAULT_TIERS,
    Advertisement,
    BfdProfile,
    ClusterConfig,
    Config,
    ExabgpConfig,
    HealthConfig,
    MetricsConfig,
    PeerConfig,
    PoolConfig,
    SpeakerConfig,
    StoreConfig,
    TierAttributes,
    effective_selectors,
    may_overlap,
)
from bgpspeaker.config.rules import (
    INVALID,
    Field,
    Issues,
    boolean,
    integer,
    list_of,
    one_of,
    optional,
    quote,
    refused,
    section,
    seconds,
    show,
)
from bgpspeaker.config.source import Node, parse
from bgpspeaker.config.values import (
    any_community,
    community,
    dns_label,
    hold_time,
    host_port,
    ip_address,
    kubeconfig_file,
    label_selector,
    labels,
    large_community,
    load_balancer_class,
    password_env,
    password_file,
    pool_entry,
    router_id,
    service_ref,
)
from bgpspeaker.config.warn import config_warnings
from bgpspeaker.model import IPAddress, Tier

__all__ = ["ConfigError", "ConfigIssue", "load_config", "load_config_text", "config_warnings"]

U32 = 2**32 - 1
# Each prepend makes the path one AS longer; beyond a few the route is already the least
# preferred everywhere, and long AS_PATHs get filtered (many networks drop paths longer
# than ~50 ASes) or blow past the router's maxas-limit. 10 is generous for three tiers.
MAX_PREPEND = 10
# minReadyEndpoints: far above any Service's endpoint count, low enough to catch a typo'd unit.
MAX_MIN_READY = 100_000
# RFC 4724: the Restart Time field of the graceful-restart capability has 12 bits.
MAX_GRACEFUL_RESTART = 4095


# --- the schema, as tables --------------------------------------------------------------

ASN = integer(1, U32)

CLUSTER = section(
    [
        Field("name", "name", dns_label, required=True),
        Field("defaultTier", "default_tier", one_of({t.value: t for t in Tier} | {"none": None})),
        Field("maintenance", "maintenance", one_of({"none": None, "drain": "drain", "withdraw": "withdraw"})),
    ]
)
SPEAKER = section(
    [
        Field("myASN", "my_asn", ASN, required=True),
        Field("routerID", "router_id", router_id),
        Field("loadBalancerClass", "load_balancer_class", load_balancer_class),
        Field("shutdown", "shutdown", one_of({"withdraw": "withdraw", "keep": "keep"})),
        Field("drainSeconds", "drain_seconds", seconds),
    ]
)
EXABGP = section(
    [
        Field("gracefulRestart", "graceful_restart", integer(0, MAX_GRACEFUL_RESTART)),
    ]
)
# ExaBGP 5.0.15 retries a connection on its own schedule (reactor/delay.py: at once, then
# 1, 2, 3, 4, 5, 7, 9, ... seconds, growing to at most 60) and no setting changes it.
NO_CONNECT_TIME = (
    "ExaBGP 5.0 has no connect-retry setting: it retries at once, then after 1, 2, 3, 4, 5, 7, 9, ... "
    "seconds, growing to at most 60 between attempts; remove connectTime"
)
PEER = section(
    [
        Field("name", "name", dns_label, required=True),
        Field("address", "address", ip_address, required=True),
        Field("asn", "asn", ASN, required=True),
        Field("port", "port", integer(1, 65535)),
        Field("holdTime", "hold_time", hold_time),
        Field("keepaliveTime", "keepalive_time", integer(0, 65535)),
        Field("connectTime", "connect_time", refused(NO_CONNECT_TIME)),
        Field("gracefulRestart", "graceful_restart", integer(0, MAX_GRACEFUL_RESTART)),
        Field("passwordFile", "password_file", password_file),
        Field("passwordEnv", "password_env", password_env),
        Field("ebgpMultiHop", "ebgp_multihop", integer(1, 255)),
        Field("sourceAddress", "source_address", ip_address),
        Field("nodeSelector", "node_selector", labels),
        Field("nodeSelectors", "node_selectors", list_of(label_selector)),
        Field("bfdProfile", "bfd_profile", dns_label),
    ]
)
POOL = section(
    [
        Field("name", "name", dns_label, required=True),
        Field("addresses", "addresses", list_of(pool_entry, non_empty=True), required=True),
        Field("autoAssign", "auto_assign", boolean),
        Field("avoidBuggyIPs", "avoid_buggy_ips", boolean),
        Field("namespaces", "namespaces", list_of(dns_label, unique=True)),
        Field("allowedCommunities", "allowed_communities", list_of(any_community, unique=True)),
        Field("shared", "shared", boolean),
        Field(
            "reservations",
            "reservations",
            list_of(
                section(
                    [
                        Field("address", "address", ip_address, required=True),
                        Field("service", "service", service_ref, required=True),
                    ]
                )
            ),
        ),
    ]
)


TIER = section(
    [
        Field("med", "med", optional(integer(0, U32))),
        Field("localPref", "local_pref", optional(integer(0, U32))),
        Field("asPathPrepend", "as_path_prepend", integer(0, MAX_PREPEND)),
        Field("communities", "communities", list_of(community, unique=True)),
        Field("largeCommunities", "large_communities", list_of(large_community, unique=True)),
        Field("minReadyEndpoints", "min_ready_endpoints", integer(1, MAX_MIN_READY)),
        Field("riseSeconds", "rise_seconds", seconds),
    ]
)
# A tier written in the file is taken as written (what you omit is not sent); a tier left
# out gets its DEFAULT_TIERS entry.
TIERS = section([Field(tier.value, tier.value, TIER) for tier in Tier])
ADVERTISEMENT = section(
    [
        Field("pools", "pools", list_of(dns_label, unique=True)),
        Field("peers", "peers", list_of(dns_label, unique=True)),
        Field("communities", "communities", list_of(community, unique=True)),
        Field("largeCommunities", "large_communities", list_of(large_community, unique=True)),
    ]
)
METRICS = section([Field("address", "address", host_port)])
HEALTH = section([Field("address", "address", host_port), Field("failAfterSeconds", "fail_after_seconds", seconds)])
SHARED_STORE = section(
    [
        Field("kubeconfig", "kubeconfig", kubeconfig_file, required=True),
        Field("namespace", "namespace", dns_label),
    ]
)
# MetalLB's BFDProfile ranges (milliseconds), so a MetalLB profile loads unchanged.
BFD_INTERVAL = integer(10, 60000)
BFD_PROFILE = section(
    [
        Field("name", "name", dns_label, required=True),
        Field("receiveInterval", "receive_interval", BFD_INTERVAL),
        Field("transmitInterval", "transmit_interval", BFD_INTERVAL),
        Field("detectMultiplier", "detect_multiplier", integer(2, 255)),
        Field("echoMode", "echo_mode", boolean),
        Field("echoInterval", "echo_interval", BFD_INTERVAL),
        Field("passiveMode", "passive_mode", boolean),
        Field("minimumTtl", "minimum_ttl", integer(1, 254)),
    ]
)

TOP = section(
    [
        Field("cluster", "cluster", CLUSTER, required=True),
        Field("speaker", "speaker", SPEAKER, required=True),
        Field("exabgp", "exabgp", EXABGP),
        Field("peers", "peers", list_of(PEER)),
        Field("pools", "pools", list_of(POOL)),
        Field("tiers", "tiers", TIERS),
        Field("advertisements", "advertisements", list_of(ADVERTISEMENT)),
        Field("bfdProfiles", "bfd_profiles", list_of(BFD_PROFILE)),
        Field("metrics", "metrics", METRICS),
        Field("health", "health", HEALTH),
        Field("sharedStore", "shared_store", SHARED_STORE),
    ]
)


# --- checks across fields -------------------------------------------------------------


def _line(root: Node, *steps: Union[str, int]) -> Optional[int]:
    node: Optional[Node] = root
    for step in steps:
        if node is None:
            return None
        node = node.get(step)
    return node.line if node else None


def _items(values: dict, key: str) -> list[tuple[int, dict]]:
    found = values.get(key)
    return [(i, v) for i, v in enumerate(found or ()) if isinstance(v, dict)]


def _check_peers(issues: Issues, root: Node, values: dict) -> None:
    names: dict[str, int] = {}
    addresses: dict[IPAddress, list[int]] = {}
    peers = _items(values, "peers")
    by_index = dict(peers)
    for i, peer in peers:
        if "password_file" in peer and "password_env" in peer:
            issues.add(f"peers[{i}]", "set passwordFile or passwordEnv, not both", line=_line(root, "peers", i))
        if "node_selector" in peer and "node_selectors" in peer:
            issues.add(
                f"peers[{i}].nodeSelectors",
                "set nodeSelector (matchLabels) or nodeSelectors, not both",
                line=_line(root, "peers", i, "nodeSelectors"),
            )
        _check_keepalive(issues, root, i, peer)
        address, source = peer.get("address"), peer.get("source_address")
        if address is not None and source is not None:
            if source.version != address.version:
                issues.add(
                    f"peers[{i}].sourceAddress",
                    f"{source} is IPv{source.version} but address {address} is IPv{address.version}",
                    line=_line(root, "peers", i, "sourceAddress"),
                )
            elif source == address:
                issues.add(
                    f"peers[{i}].sourceAddress",
                    f"{source} is the peer's own address",
                    line=_line(root, "peers", i, "sourceAddress"),
                )
        name = peer.get("name")
        if name is not None:
            if name in names:
                issues.add(
                    f"peers[{i}].name",
                    f"{quote(name)} is already the name of peers[{names[name]}]",
                    line=_line(root, "peers", i, "name"),
                )
            else:
                names[name] = i
        if address is not None:
            for j in addresses.get(address, []):
                # Two racks may reach "the same" router address on different links; a node
                # that both selectors can match would get two sessions to one address.
                if not _disjoint(peer, by_index[j]):
                    issues.add(
                        f"peers[{i}].address",
                        f"{address} is already the address of peers[{j}] "
                        f"(give them nodeSelectors that cannot match the same node)",
                        line=_line(root, "peers", i, "address"),
                    )
                    break
            addresses.setdefault(address, []).append(i)


def _disjoint(a: dict, b: dict) -> bool:
    """True when no node can match both peers' node selectors (invalid selectors: assume not)."""
    if INVALID in a.get("node_selectors", ()) or INVALID in b.get("node_selectors", ()):
        return False
    left, right = (
        effective_selectors(peer.get("node_selector", ()), peer.get("node_selectors", ())) for peer in (a, b)
    )
    return not any(may_overlap(x, y) for x in left for y in right)


def _check_keepalive(issues: Issues, root: Node, i: int, peer: dict) -> None:
    """keepaliveTime must say what ExaBGP does: keepalives every third of the hold time."""
    keepalive = peer.get("keepalive_time")
    if keepalive is None:
        return
    hold = peer.get("hold_time", PeerConfig.hold_time)
    if keepalive != hold // 3:  # ExaBGP: int(negotiated hold time / 3); a lower router hold time lowers it
        issues.add(
            f"peers[{i}].keepaliveTime",
            f"ExaBGP 5.0 sends keepalives every third of the hold time and cannot be told otherwise: "
            f"with holdTime {hold} that is {hold // 3}; write {hold // 3}"
            + (f", or set holdTime to {3 * keepalive}" if 1 <= keepalive <= 21845 else "")
            + ", or leave keepaliveTime out",
            line=_line(root, "peers", i, "keepaliveTime"),
        )


def _check_pools(issues: Issues, root: Node, values: dict) -> None:
    names: dict[str, int] = {}
    entries = []  # (entry, pool index, address index, pool name)
    for i, pool in _items(values, "pools"):
        name = pool.get("name")
        if name is not None:
            if name in names:
                issues.add(
                    f"pools[{i}].name",
                    f"{quote(name)} is already the name of pools[{names[name]}]",
                    line=_line(root, "pools", i, "name"),
                )
            else:
                names[name] = i
        for k, entry in enumerate(pool.get("addresses") or ()):
            if entry is not INVALID:
                entries.append((entry, i, k, name))
        _check_reservations(issues, root, i, pool)
        if pool.get("shared") is True and "shared_store" not in values:
            issues.add(
                f"pools[{i}].shared",
                "a shared pool needs sharedStore: the record store (kubeconfig and "
                "namespace) that every cluster announcing this pool uses",
                line=_line(root, "pools", i, "shared"),
            )
    # Pools are few and small lists; pairwise is clear and fast enough.
    for n, (entry, i, k, _) in enumerate(entries):
        for other, j, m, other_name in entries[:n]:
            if entry.first.version != other.first.version:
                continue
            first, last = max(entry.first, other.first), min(entry.last, other.last)
            if first > last:
                continue
            where = "the same pool" if i == j else f"pool {other_name}" if other_name else f"pools[{j}]"
            issues.add(
                f"pools[{i}].addresses[{k}]",
                f"{entry.text} overlaps pools[{j}].addresses[{m}] {other.text} ({where}): "
                f"{_span(first, last)} is in both",
                line=_line(root, "pools", i, "addresses", k),
            )
            break
    # A pool holding a peer's own address (the router's, or the source we speak from) would
    # let a Service announce that address back to the routers: a hijack of their sessions.
    for i, peer in _items(values, "peers"):
        for key in ("address", "source_address"):
            own = peer.get(key)
            if own is None or own is INVALID:
                continue
            for entry, j, k, _name in entries:
                if entry.first.version == own.version and entry.first <= own <= entry.last:
                    field = "address" if key == "address" else "sourceAddress"
                    issues.add(
                        f"pools[{j}].addresses[{k}]",
                        f"{entry.text} contains {own}, peers[{i}].{field} "
                        f"(peer {peer.get('name')}): a pool must not hold a BGP session's own address",
                        line=_line(root, "pools", j, "addresses", k),
                    )


def _check_reservations(issues: Issues, root: Node, i: int, pool: dict) -> None:
    entries = [e for e in pool.get("addresses") or () if e is not INVALID]
    seen: dict[IPAddress, int] = {}
    for k, reservation in enumerate(pool.get("reservations") or ()):
        address = reservation.get("address") if isinstance(reservation, dict) else None
        if address is None or address is INVALID:
            continue
        where = f"pools[{i}].reservations[{k}].address"
        if entries and not any(e.first.version == address.version and e.first <= address <= e.last for e in entries):
            issues.add(
                where,
                f"{address} is not in this pool's addresses",
                line=_line(root, "pools", i, "reservations", k, "address"),
            )
        elif address in seen:
            issues.add(
                where,
                f"{address} is already reserved by reservations[{seen[address]}]",
                line=_line(root, "pools", i, "reservations", k, "address"),
            )
        else:
            seen[address] = k


def _span(first: IPAddress, last: IPAddress) -> str:
    networks = list(ipaddress.summarize_address_range(first, last))
    return str(networks[0]) if len(networks) == 1 else f"{first}-{last}"


def _check_advertisements(issues: Issues, root: Node, values: dict) -> None:
    for key, what in (("pools", "pool"), ("peers", "peer")):
        defined = [item.get("name") for _, item in _items(values, key)]
        if None in defined:  # an invalid name was already reported; do not pile on
            continue
        for i, advertisement in _items(values, "advertisements"):
            for k, name in enumerate(advertisement.get(key) or ()):
                if name is not INVALID and name not in defined:
                    known = (
                        ", ".join(str(n) for n in defined[:10]) + (", ..." if len(defined) > 10 else "")
                        if defined
                        else "none"
                    )
                    issues.add(
                        f"advertisements[{i}].{key}[{k}]",
                        f"unknown {what} {quote(name)} ({key}: {known})",
                        line=_line(root, "advertisements", i, key, k),
                    )


def _check_bfd(issues: Issues, root: Node, values: dict) -> None:
    """Profile names are unique; a peer's bfdProfile names one of them."""
    names: dict[str, int] = {}
    profiles = _items(values, "bfd_profiles")
    for i, profile in profiles:
        name = profile.get("name")
        if name in names:
            issues.add(
                f"bfdProfiles[{i}].name",
                f"{quote(name)} is already the name of bfdProfiles[{names[name]}]",
                line=_line(root, "bfdProfiles", i, "name"),
            )
        elif name is not None:
            names[name] = i
    written = values.get("bfd_profiles", ())
    if root.get("bfdProfiles") is not None and (
        "bfd_profiles" not in values or len(profiles) != len(written) or any("name" not in p for _, p in profiles)
    ):
        return  # a bad profile list or name was reported already: references to it would only pile on
    for i, peer in _items(values, "peers"):
        wanted = peer.get("bfd_profile")
        if wanted is not None and wanted not in names:
            known = ", ".join(names) or "none defined"
            issues.add(
                f"peers[{i}].bfdProfile",
                f"unknown BFD profile {quote(wanted)} (bfdProfiles: {known})",
                line=_line(root, "peers", i, "bfdProfile"),
            )


# --- building the Config --------------------------------------------------------------


def _build(values: dict) -> Config:
    """Only called when no issue was found: every required field is present and valid."""
    tiers_written = values.get("tiers", {})
    return Config(
        cluster=ClusterConfig(**values["cluster"]),
        speaker=SpeakerConfig(**values["speaker"]),
        exabgp=ExabgpConfig(**values.get("exabgp", {})),
        peers=tuple(PeerConfig(**peer) for peer in values.get("peers", ())),
        pools=tuple(
            PoolConfig(
                **{
                    **pool,
                    "addresses": tuple(net for entry in pool["addresses"] for net in entry.networks),
                    "reservations": tuple((r["address"], r["service"]) for r in pool.get("reservations", ())),
                }
            )
            for pool in values.get("pools", ())
        ),
        shared_store=StoreConfig(**values["shared_store"]) if "shared_store" in values else None,
        # Omitted tiers are the DEFAULT_TIERS objects themselves: config_warnings relies on
        # that identity to stay quiet about attributes the operator never wrote.
        tiers={
            tier: TierAttributes(**tiers_written[tier.value]) if tier.value in tiers_written else DEFAULT_TIERS[tier]
            for tier in Tier
        },
        advertisements=tuple(Advertisement(**a) for a in values.get("advertisements", ())),
        bfd_profiles=tuple(BfdProfile(**p) for p in values.get("bfd_profiles", ())),
        metrics=MetricsConfig(*values["metrics"]["address"])
        if "address" in values.get("metrics", {})
        else MetricsConfig(),
        health=_health(values.get("health", {})),
    )


def _health(values: dict) -> HealthConfig:
    host, port = values.get("address", (None, None))
    rest = {k: v for k, v in values.items() if k != "address"}
    return HealthConfig(host=host, port=port, **rest)


def load_config_text(text: str, source: str = "<string>") -> Config:
    """The Config in `text`, or ConfigError with every problem found. `source` names it in errors."""
    root, found = parse(text)
    issues = Issues()
    issues.list.extend(found)
    if root is not None and root.kind != "broken":
        if root.kind != "mapping":
            issues.add(
                "", f"the config must be a mapping (cluster, speaker, peers, ...), got {show(root)}", line=root.line
            )
        else:
            values = TOP(issues, "", root)
            _check_peers(issues, root, values)
            _check_pools(issues, root, values)
            _check_advertisements(issues, root, values)
            _check_bfd(issues, root, values)
    if issues.list or root is None:
        raise ConfigError(sorted(issues.list, key=lambda i: i.line or 0), source=source)
    return _build(values)


def load_config(path: str | os.PathLike) -> Config:
    """The Config in the file at `path`; ConfigError (never OSError) if it cannot be read or is bad."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError(
            [ConfigIssue("", f"cannot read {os.fspath(path)}: {error.strerror}")], source=os.fspath(path)
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [ConfigIssue("", f"{os.fspath(path)} is not UTF-8 text (byte {error.start})")], source=os.fspath(path)
        ) from None
    return load_config_text(text, source=os.fspath(path))
