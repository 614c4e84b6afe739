"""YAML to a validated Config, reporting every problem with its field path and line.

Why it works this way:
- An operator fixing a config wants all the problems at once, so nothing raises at the
  first error: rules append ConfigIssues and return INVALID, and the loader goes on.
  Only when no issue was found is a Config built; a bad file never yields a partial
  Config, which is what lets a live reload keep the last good one (DESIGN.md invariant 6).
- The field rules read as tables (one row per YAML key: name, attribute, rule, required)
  so the accepted schema is visible in one place and unknown keys — typos — are errors
  with a suggestion, never silently ignored.
- Types are strict: `port: "179"` and `asn: true` are errors (bool is an int in Python,
  and YAML 1.1 reads yes/no/on/off as booleans). Strings are taken as written, see
  source.py for the YAML 1.1 traps that avoids.
- Cross-field checks (duplicates, overlaps, references) run on whatever fields were
  valid, so one bad field does not hide the other problems.

`check-config` writes its whole report to stdout (errors, `warning: ` lines, then an
`ok:` or `invalid:` summary): the report *is* the command's output, so it can be piped
and grepped; the exit code says valid (0) or not (2).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from bgpspeaker.config import secrets
from bgpspeaker.config.issues import ConfigError, ConfigIssue
from bgpspeaker.config.schema import (
    DEFAULT_TIERS, Advertisement, ClusterConfig, Config, ExabgpConfig, MetricsConfig, PeerConfig,
    PoolConfig, SpeakerConfig, TierAttributes,
)
from bgpspeaker.config.source import Node, join, parse
from bgpspeaker.config.warn import config_warnings
from bgpspeaker.model import Community, LargeCommunity, Tier, freeze_pairs, parse_any_community

__all__ = ["ConfigError", "ConfigIssue", "load_config", "load_config_text", "config_warnings",
           "check_config_command"]

U32 = 2**32 - 1
# Each prepend makes the path one AS longer; beyond a few the route is already the least
# preferred everywhere, and long AS_PATHs get filtered (many networks drop paths longer
# than ~50 ASes) or blow past the router's maxas-limit. 10 is generous for three tiers.
MAX_PREPEND = 10
# RFC 4724: the Restart Time field of the graceful-restart capability has 12 bits.
MAX_GRACEFUL_RESTART = 4095


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()  # what a rule returns after it reported the problem

Rule = Callable[["_Issues", str, Node], Any]


class _Issues:
    def __init__(self) -> None:
        self.list: list[ConfigIssue] = []

    def add(self, path: str, message: str, node: Optional[Node] = None, line: Optional[int] = None) -> Any:
        self.list.append(ConfigIssue(path, message, line if line is not None else node.line if node else None))
        return INVALID


def _apply(rule: Rule, issues: _Issues, path: str, node: Node) -> Any:
    """rule(node), except for a scalar YAML could not construct: source.py reported it already."""
    return INVALID if node.kind == "broken" else rule(issues, path, node)


def _show(node: Node) -> str:
    """What the operator wrote, named in YAML terms: `string '90'`, `boolean true`, `a list`."""
    if node.kind == "mapping":
        return "a mapping"
    if node.kind == "sequence":
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {node.text}"
    if isinstance(value, int):
        return f"integer {node.text}"
    if isinstance(value, float):
        return f"number {node.text}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    return f"{type(value).__name__} {_quote(node.text)}"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- scalar rules ---------------------------------------------------------------------

_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")


def _integer(issues: _Issues, path: str, node: Node) -> Any:
    if node.kind == "scalar" and type(node.value) is int:
        if node.plain and not _DECIMAL.match(node.text):
            # YAML 1.1 reads 010 as 8, 1:30 as 90, 0x10 as 16: almost never what was meant.
            return issues.add(path, f"write {node.text} as a plain decimal number (YAML reads it as {node.value})", node)
        return node.value
    return issues.add(path, f"must be an integer, got {_show(node)}", node)


def integer(low: int, high: int) -> Rule:
    def rule(issues: _Issues, path: str, node: Node) -> Any:
        value = _integer(issues, path, node)
        if value is not INVALID and not low <= value <= high:
            return issues.add(path, f"must be {low}..{high}, got {value}", node)
        return value
    return rule


def hold_time(issues: _Issues, path: str, node: Node) -> Any:
    value = _integer(issues, path, node)
    if value is not INVALID and not (value == 0 or 3 <= value <= 65535):  # RFC 4271 §4.2
        return issues.add(path, f"must be 0 (no keepalives) or 3..65535, got {value}", node)
    return value


def seconds(issues: _Issues, path: str, node: Node) -> Any:
    value = node.value if node.kind == "scalar" else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return issues.add(path, f"must be a number of seconds, got {_show(node)}", node)
    if not math.isfinite(value) or value < 0:
        return issues.add(path, f"must be a number of seconds >= 0, got {node.text}", node)
    return float(value)


def boolean(issues: _Issues, path: str, node: Node) -> Any:
    if node.kind == "scalar" and isinstance(node.value, bool):
        return node.value
    return issues.add(path, f"must be true or false, got {_show(node)}", node)


def string(issues: _Issues, path: str, node: Node) -> Any:
    if node.kind != "scalar" or (node.plain and node.value is None):
        return issues.add(path, f"must be a string, got {_show(node)}", node)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in node.text):  # no field needs them; they forge output
        return issues.add(path, f"{_quote(node.text)} contains a line break or another control character", node)
    return node.text  # as written: `name: no` is the string 'no', not false


def one_of(choices: dict[str, Any]) -> Rule:
    def rule(issues: _Issues, path: str, node: Node) -> Any:
        text = string(issues, path, node)
        if text is INVALID:
            return text
        if text not in choices:
            return issues.add(path, f"must be one of {', '.join(choices)}, got {_quote(text)}", node)
        return choices[text]
    return rule


def pattern(regex: str, what: str) -> Rule:
    compiled = re.compile(regex)

    def rule(issues: _Issues, path: str, node: Node) -> Any:
        text = string(issues, path, node)
        if text is not INVALID and not compiled.fullmatch(text):
            return issues.add(path, f"{_quote(text)} is not {what}", node)
        return text
    return rule


_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
dns_label = pattern(_LABEL, "a DNS label (lowercase letters, digits and '-', at most 63, "
                            "starting and ending with a letter or digit)")
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_QUALIFIED = rf"({_LABEL}(\.{_LABEL})*/)?{_NAME_PART}"  # Kubernetes label keys, loadBalancerClass
label_key = pattern(_QUALIFIED, "a label key ([prefix/]name)")
label_value = pattern(rf"({_NAME_PART})?", "a label value (at most 63 letters, digits, '-', '_', '.')")


def load_balancer_class(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text not in (INVALID, "") and not re.fullmatch(_QUALIFIED, text):
        return issues.add(path, f"{_quote(text)} is not a class name like example.com/lb", node)
    return text


def _ip_text(issues: _Issues, path: str, node: Node) -> Any:
    """A string meant to hold IP addresses, refusing IPv6 scope ids (`fe80::1%eth0`).

    ipaddress accepts any text after '%' (newlines included) and str() gives it back, so a
    scope id would carry arbitrary text into ExaBGP commands and config (DESIGN.md invariant 4).
    """
    text = string(issues, path, node)
    if text is not INVALID and "%" in text:
        return issues.add(path, f"{_quote(text)}: IPv6 scope ids (%...) are not supported", node)
    return text


def ip_address(issues: _Issues, path: str, node: Node) -> Any:
    """An address we connect to or from: not loopback, unspecified or multicast."""
    text = _ip_text(issues, path, node)
    if text is INVALID:
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return issues.add(path, f"{_quote(text)} is not an IP address", node)
    for bad, what in ((address.is_loopback, "loopback"), (address.is_unspecified, "unspecified"),
                      (address.is_multicast, "multicast"),
                      (address == ipaddress.IPv4Address("255.255.255.255"), "broadcast")):
        if bad:
            return issues.add(path, f"{text} is a {what} address", node)
    return address


def router_id(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text is INVALID or text == "auto":
        return None if text == "auto" else text
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return issues.add(path, f"must be auto or an IPv4 address, got {_quote(text)}", node)
    if int(address) == 0:  # RFC 6286: the BGP Identifier is a non-zero 32-bit number
        return issues.add(path, "must not be 0.0.0.0", node)
    return address


def password_file(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    # The value is not echoed when it is not a path: it may be the password itself, typed
    # in the wrong field, and this message reaches terminals and logs (invariant 5).
    if not os.path.isabs(text):  # the daemon's working directory is not something to rely on
        return issues.add(path, "must be an absolute path to the file holding the password "
                                "(the value is not shown: it may be the password itself)", node)
    try:
        secrets.read_password_file(text)  # only to prove it can be read; the content is dropped
    except secrets.SecretError as error:
        return issues.add(path, str(error), node)
    return text


def password_env(issues: _Issues, path: str, node: Node) -> Any:
    # Never echo the value (see password_file): a password like `hunter2` is a valid name too.
    name = string(issues, path, node)
    if name is INVALID:
        return name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return issues.add(path, "must be the name of an environment variable holding the password "
                                "(the value is not shown: it may be the password itself)", node)
    if name not in os.environ:
        return issues.add(path, "the environment variable it names is not set", node)
    try:
        secrets.read_password_env(name)
    except secrets.SecretError as error:
        return issues.add(path, str(error), node)
    return name


def host_port(issues: _Issues, path: str, node: Node) -> Any:
    text = _ip_text(issues, path, node)
    if text is INVALID:
        return text
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        hint = " (write IPv6 in brackets: [::]:7472)" if ":" in host else ""
        return issues.add(path, f"{_quote(text)} is not host:port with an IP address host{hint}", node)
    if address.version == 6 and not text.startswith("["):
        return issues.add(path, f"{_quote(text)}: write IPv6 in brackets, like [::]:7472", node)
    if not (_DECIMAL.match(port) and 1 <= int(port) <= 65535):
        return issues.add(path, f"{_quote(text)}: port must be 1..65535", node)
    return (str(address), int(port))


def community(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return Community.parse(text)
    except ValueError as error:
        if text.count(":") == 2:
            return issues.add(path, f"{_quote(text)} is a large community: list it under largeCommunities", node)
        return issues.add(path, str(error), node)


def large_community(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return LargeCommunity.parse(text)
    except ValueError as error:
        return issues.add(path, str(error), node)


def any_community(issues: _Issues, path: str, node: Node) -> Any:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return parse_any_community(text)
    except ValueError as error:
        return issues.add(path, str(error), node)


# Addresses a pool must never hand out: routers must not learn routes for them.
_SPECIAL_NETWORKS = tuple((ipaddress.ip_network(net), what) for net, what in (
    ("0.0.0.0/8", "this-network"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("fe80::/10", "link-local"), ("ff00::/8", "multicast"),
))


@dataclass(frozen=True)
class _PoolEntry:
    """One item of pools[i].addresses: the CIDRs it stands for and its first/last address."""

    text: str
    first: Any
    last: Any
    networks: tuple


def pool_entry(issues: _Issues, path: str, node: Node) -> Any:
    text = _ip_text(issues, path, node)
    if text is INVALID:
        return text
    if "-" in text:
        low_text, high_text = (part.strip() for part in text.split("-", 1))
        try:
            low, high = ipaddress.ip_address(low_text), ipaddress.ip_address(high_text)
        except ValueError:
            return issues.add(path, f"{_quote(text)} is not a range of two IP addresses (a-b)", node)
        if low.version != high.version:
            return issues.add(path, f"{_quote(text)} mixes IPv4 and IPv6", node)
        if low > high:
            return issues.add(path, f"{_quote(text)} is backwards: {low} comes after {high}", node)
        networks = tuple(ipaddress.summarize_address_range(low, high))
    else:
        try:
            networks = (ipaddress.ip_network(text),)
        except ValueError:
            try:
                loose = ipaddress.ip_interface(text)
            except ValueError:
                return issues.add(path, f"{_quote(text)} is not a network", node)
            return issues.add(path, f"{_quote(text)} has host bits set: did you mean {loose.network} "
                                    f"(or {loose.ip}/{loose.max_prefixlen} for the single address)?", node)
        low, high = networks[0].network_address, networks[0].broadcast_address
    for special, what in _SPECIAL_NETWORKS:
        if special.version == low.version and special.network_address <= high and low <= special.broadcast_address:
            return issues.add(path, f"{_quote(text)} overlaps {special} ({what}), which cannot be a Service address",
                              node)
    return _PoolEntry(text, low, high, networks)


# --- composite rules ------------------------------------------------------------------


def optional(rule: Rule) -> Rule:
    """null is allowed and means "not set" (for tier attributes that are simply not sent)."""
    def wrapped(issues: _Issues, path: str, node: Node) -> Any:
        return None if node.kind == "scalar" and node.plain and node.value is None else rule(issues, path, node)
    return wrapped


def list_of(item: Rule, *, unique: bool = False, non_empty: bool = False) -> Rule:
    """A YAML list (null = empty). Keeps INVALID items, so indices still match the file."""
    def rule(issues: _Issues, path: str, node: Node) -> Any:
        if node.kind == "scalar" and node.value is None:
            items: list[Node] = []
        elif node.kind != "sequence":
            hint = f" (write [{node.text}])" if node.kind == "scalar" else ""
            return issues.add(path, f"must be a list, got {_show(node)}{hint}", node)
        else:
            items = node.value
        if non_empty and not items:
            return issues.add(path, "must list at least one entry", node)
        values = []
        first_at: dict[Any, int] = {}
        for index, child in enumerate(items):
            value = _apply(item, issues, f"{path}[{index}]", child)
            if unique and value is not INVALID:
                if value in first_at:
                    value = issues.add(f"{path}[{index}]", f"{_quote(child.text)} is listed twice "
                                                           f"(also [{first_at[value]}])", child)
                else:
                    first_at[value] = index
            values.append(value)
        return tuple(values)
    return rule


def labels(issues: _Issues, path: str, node: Node) -> Any:
    """A Kubernetes matchLabels mapping, as sorted (key, value) pairs."""
    if node.kind == "scalar" and node.value is None:
        return ()
    if node.kind != "mapping":
        return issues.add(path, f"must be a mapping of label: value, got {_show(node)}", node)
    result = {}
    for key, child in node.value.items():
        key_node = Node("scalar", node.key_lines[key], value=key, text=key)
        if label_key(issues, join(path, key), key_node) is INVALID:
            continue
        value = _apply(label_value, issues, join(path, key), child)
        if value is not INVALID:
            result[key] = value
    return freeze_pairs(result)


@dataclass(frozen=True)
class Field:
    """One row of a field table: YAML key, dataclass attribute, rule, required or defaulted."""

    key: str
    attr: str
    rule: Rule
    required: bool = False


def section(fields: Iterable[Field]) -> Rule:
    """A YAML mapping read by a field table, as {attr: value} of the valid fields only.

    Absent fields are absent from the result (the dataclass default applies); null is an
    empty mapping, so a section whose lines are all commented out means "defaults".
    """
    table = {f.key: f for f in fields}

    def rule(issues: _Issues, path: str, node: Node) -> Any:
        if node.kind == "scalar" and node.value is None:
            children: dict[str, Node] = {}
        elif node.kind != "mapping":
            return issues.add(path, f"must be a mapping, got {_show(node)}", node)
        else:
            children = node.value
        values: dict[str, Any] = {}
        for key, child in children.items():
            if key not in table:
                issues.add(join(path, key), f"unknown field ({_suggest(key, table)})",
                           line=node.key_lines.get(key, child.line))
                continue
            value = _apply(table[key].rule, issues, join(path, key), child)
            if value is not INVALID:
                values[table[key].attr] = value
        for f in table.values():
            if f.required and f.key not in children:
                issues.add(join(path, f.key), "required field is missing", node)
        return values
    return rule


def _suggest(word: str, options: Iterable[str]) -> str:
    options = list(options)
    for option in options:
        if option.lower() == word.lower():
            return f"did you mean {option}?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return f"expected one of: {', '.join(options)}"


# --- the schema, as tables --------------------------------------------------------------

ASN = integer(1, U32)

CLUSTER = section([
    Field("name", "name", dns_label, required=True),
    Field("defaultTier", "default_tier", one_of({t.value: t for t in Tier} | {"none": None})),
])
SPEAKER = section([
    Field("myASN", "my_asn", ASN, required=True),
    Field("routerID", "router_id", router_id),
    Field("loadBalancerClass", "load_balancer_class", load_balancer_class),
    Field("shutdown", "shutdown", one_of({"withdraw": "withdraw", "keep": "keep"})),
    Field("drainSeconds", "drain_seconds", seconds),
])
EXABGP = section([
    Field("gracefulRestart", "graceful_restart", integer(0, MAX_GRACEFUL_RESTART)),
])
PEER = section([
    Field("name", "name", dns_label, required=True),
    Field("address", "address", ip_address, required=True),
    Field("asn", "asn", ASN, required=True),
    Field("port", "port", integer(1, 65535)),
    Field("holdTime", "hold_time", hold_time),
    Field("passwordFile", "password_file", password_file),
    Field("passwordEnv", "password_env", password_env),
    Field("ebgpMultiHop", "ebgp_multihop", integer(1, 255)),
    Field("sourceAddress", "source_address", ip_address),
    Field("nodeSelector", "node_selector", labels),
])
POOL = section([
    Field("name", "name", dns_label, required=True),
    Field("addresses", "addresses", list_of(pool_entry, non_empty=True), required=True),
    Field("autoAssign", "auto_assign", boolean),
    Field("avoidBuggyIPs", "avoid_buggy_ips", boolean),
    Field("namespaces", "namespaces", list_of(dns_label, unique=True)),
    Field("allowedCommunities", "allowed_communities", list_of(any_community, unique=True)),
])


TIER = section([
    Field("med", "med", optional(integer(0, U32))),
    Field("localPref", "local_pref", optional(integer(0, U32))),
    Field("asPathPrepend", "as_path_prepend", integer(0, MAX_PREPEND)),
    Field("communities", "communities", list_of(community, unique=True)),
    Field("largeCommunities", "large_communities", list_of(large_community, unique=True)),
])
# A tier written in the file is taken as written (what you omit is not sent); a tier left
# out gets its DEFAULT_TIERS entry.
TIERS = section([Field(tier.value, tier.value, TIER) for tier in Tier])
ADVERTISEMENT = section([
    Field("pools", "pools", list_of(dns_label, unique=True)),
    Field("peers", "peers", list_of(dns_label, unique=True)),
    Field("communities", "communities", list_of(community, unique=True)),
    Field("largeCommunities", "large_communities", list_of(large_community, unique=True)),
])
METRICS = section([Field("address", "address", host_port)])

TOP = section([
    Field("cluster", "cluster", CLUSTER, required=True),
    Field("speaker", "speaker", SPEAKER, required=True),
    Field("exabgp", "exabgp", EXABGP),
    Field("peers", "peers", list_of(PEER)),
    Field("pools", "pools", list_of(POOL)),
    Field("tiers", "tiers", TIERS),
    Field("advertisements", "advertisements", list_of(ADVERTISEMENT)),
    Field("metrics", "metrics", METRICS),
])


# --- checks across fields -------------------------------------------------------------


def _line(root: Node, *steps: Any) -> Optional[int]:
    node: Optional[Node] = root
    for step in steps:
        if node is None:
            return None
        node = node.get(step)
    return node.line if node else None


def _items(values: dict, key: str) -> list[tuple[int, dict]]:
    found = values.get(key)
    return [(i, v) for i, v in enumerate(found or ()) if isinstance(v, dict)]


def _check_peers(issues: _Issues, root: Node, values: dict) -> None:
    names: dict[str, int] = {}
    addresses: dict[Any, list[int]] = {}
    peers = _items(values, "peers")
    by_index = dict(peers)
    for i, peer in peers:
        if "password_file" in peer and "password_env" in peer:
            issues.add(f"peers[{i}]", "set passwordFile or passwordEnv, not both", line=_line(root, "peers", i))
        address, source = peer.get("address"), peer.get("source_address")
        if address is not None and source is not None:
            if source.version != address.version:
                issues.add(f"peers[{i}].sourceAddress", f"{source} is IPv{source.version} but address {address} "
                                                        f"is IPv{address.version}",
                           line=_line(root, "peers", i, "sourceAddress"))
            elif source == address:
                issues.add(f"peers[{i}].sourceAddress", f"{source} is the peer's own address",
                           line=_line(root, "peers", i, "sourceAddress"))
        name = peer.get("name")
        if name is not None:
            if name in names:
                issues.add(f"peers[{i}].name", f"{_quote(name)} is already the name of peers[{names[name]}]",
                           line=_line(root, "peers", i, "name"))
            else:
                names[name] = i
        if address is not None:
            for j in addresses.get(address, []):
                # Two racks may reach "the same" router address on different links; a node
                # that both selectors can match would get two sessions to one address.
                if not _disjoint(peer.get("node_selector", ()), by_index[j].get("node_selector", ())):
                    issues.add(f"peers[{i}].address", f"{address} is already the address of peers[{j}] "
                                                      f"(give them nodeSelectors that cannot match the same node)",
                               line=_line(root, "peers", i, "address"))
                    break
            addresses.setdefault(address, []).append(i)


def _disjoint(a: tuple, b: tuple) -> bool:
    """True when no node can match both matchLabels selectors: one key, two values."""
    left = dict(a)
    return any(key in left and left[key] != value for key, value in b)


def _check_pools(issues: _Issues, root: Node, values: dict) -> None:
    names: dict[str, int] = {}
    entries = []  # (entry, pool index, address index, pool name)
    for i, pool in _items(values, "pools"):
        name = pool.get("name")
        if name is not None:
            if name in names:
                issues.add(f"pools[{i}].name", f"{_quote(name)} is already the name of pools[{names[name]}]",
                           line=_line(root, "pools", i, "name"))
            else:
                names[name] = i
        for k, entry in enumerate(pool.get("addresses") or ()):
            if entry is not INVALID:
                entries.append((entry, i, k, name))
    # Pools are few and small lists; pairwise is clear and fast enough.
    for n, (entry, i, k, _) in enumerate(entries):
        for other, j, m, other_name in entries[:n]:
            if entry.first.version != other.first.version:
                continue
            first, last = max(entry.first, other.first), min(entry.last, other.last)
            if first > last:
                continue
            where = "the same pool" if i == j else f"pool {other_name}" if other_name else f"pools[{j}]"
            issues.add(f"pools[{i}].addresses[{k}]",
                       f"{entry.text} overlaps pools[{j}].addresses[{m}] {other.text} ({where}): "
                       f"{_span(first, last)} is in both", line=_line(root, "pools", i, "addresses", k))
            break


def _span(first: Any, last: Any) -> str:
    networks = list(ipaddress.summarize_address_range(first, last))
    return str(networks[0]) if len(networks) == 1 else f"{first}-{last}"


def _check_advertisements(issues: _Issues, root: Node, values: dict) -> None:
    for key, what in (("pools", "pool"), ("peers", "peer")):
        defined = [item.get("name") for _, item in _items(values, key)]
        if None in defined:  # an invalid name was already reported; do not pile on
            continue
        for i, advertisement in _items(values, "advertisements"):
            for k, name in enumerate(advertisement.get(key) or ()):
                if name is not INVALID and name not in defined:
                    known = ", ".join(defined[:10]) + (", ..." if len(defined) > 10 else "") if defined else "none"
                    issues.add(f"advertisements[{i}].{key}[{k}]", f"unknown {what} {_quote(name)} ({key}: {known})",
                               line=_line(root, "advertisements", i, key, k))


# --- building the Config --------------------------------------------------------------


def _build(values: dict) -> Config:
    """Only called when no issue was found: every required field is present and valid."""
    tiers_written = values.get("tiers", {})
    return Config(
        cluster=ClusterConfig(**values["cluster"]),
        speaker=SpeakerConfig(**values["speaker"]),
        exabgp=ExabgpConfig(**values.get("exabgp", {})),
        peers=tuple(PeerConfig(**peer) for peer in values.get("peers", ())),
        pools=tuple(PoolConfig(**{**pool, "addresses": tuple(net for entry in pool["addresses"]
                                                             for net in entry.networks)})
                    for pool in values.get("pools", ())),
        # Omitted tiers are the DEFAULT_TIERS objects themselves: config_warnings relies on
        # that identity to stay quiet about attributes the operator never wrote.
        tiers={tier: TierAttributes(**tiers_written[tier.value]) if tier.value in tiers_written
               else DEFAULT_TIERS[tier] for tier in Tier},
        advertisements=tuple(Advertisement(**a) for a in values.get("advertisements", ())),
        metrics=MetricsConfig(*values["metrics"]["address"]) if "address" in values.get("metrics", {})
        else MetricsConfig(),
    )


def load_config_text(text: str, source: str = "<string>") -> Config:
    """The Config in `text`, or ConfigError with every problem found. `source` names it in errors."""
    root, found = parse(text)
    issues = _Issues()
    issues.list.extend(found)
    if root is not None and root.kind != "broken":
        if root.kind != "mapping":
            issues.add("", f"the config must be a mapping (cluster, speaker, peers, ...), got {_show(root)}",
                       line=root.line)
        else:
            values = TOP(issues, "", root)
            _check_peers(issues, root, values)
            _check_pools(issues, root, values)
            _check_advertisements(issues, root, values)
    if issues.list or root is None:
        raise ConfigError(sorted(issues.list, key=lambda i: i.line or 0), source=source)
    return _build(values)


def load_config(path: str | os.PathLike) -> Config:
    """The Config in the file at `path`; ConfigError (never OSError) if it cannot be read or is bad."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError([ConfigIssue("", f"cannot read {os.fspath(path)}: {error.strerror}")],
                          source=os.fspath(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([ConfigIssue("", f"{os.fspath(path)} is not UTF-8 text (byte {error.start})")],
                          source=os.fspath(path)) from None
    return load_config_text(text, source=os.fspath(path))


def check_config_command(args: Any) -> int:
    """`bgpspeaker check-config F`: the report on stdout; exit 0 valid (warnings allowed), 2 not."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for issue in error.issues:
            print(issue)
        print(f"invalid: {args.config}: {len(error.issues)} error{'s' if len(error.issues) != 1 else ''}")
        sys.stdout.flush()
        return 2
    for warning in config_warnings(config):
        print(f"warning: {warning}")
    addresses = sum(net.num_addresses for pool in config.pools for net in pool.addresses)
    print(f"ok: {args.config}: {len(config.peers)} peers, {len(config.pools)} pools ({addresses} addresses)")
    return 0
