"""Value rules that know BGP and Kubernetes: addresses, communities, names, pools, passwords.

Each is a rule in the sense of rules.py (report and return INVALID, never raise). They
are kept apart from the generic toolkit so a new field's rule has an obvious home, and
apart from the schema tables (load.py) so the tables read as one screen.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from bgpspeaker.config import secrets
from bgpspeaker.config.rules import (
    DECIMAL,
    INVALID,
    Field,
    Parsed,
    Issues,
    apply_rule,
    integer_value,
    list_of,
    one_of,
    pattern,
    quote,
    section,
    show,
    string,
)
from bgpspeaker.config.schema import LabelRequirement, LabelSelector
from bgpspeaker.config.source import Node, join
from bgpspeaker.model import Community, IPAddress, LargeCommunity, freeze_pairs, parse_any_community


def hold_time(issues: Issues, path: str, node: Node) -> Parsed:
    value = integer_value(issues, path, node)
    if value is not INVALID and not (value == 0 or 3 <= value <= 65535):  # RFC 4271 §4.2
        return issues.add(path, f"must be 0 (no keepalives) or 3..65535, got {value}", node)
    return value


LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
dns_label = pattern(
    LABEL, "a DNS label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
)
service_ref = pattern(f"{LABEL}/{LABEL}", "a Service as namespace/name")


def kubeconfig_file(issues: Issues, path: str, node: Node) -> Parsed:
    """An absolute path (the record store's kubeconfig). Not read here: it is mounted from a
    Secret on the nodes, not where the config is checked; the daemon reads it at start."""
    text = string(issues, path, node)
    if text is INVALID:
        return text
    if not os.path.isabs(text):
        return issues.add(path, f"{quote(text)} must be an absolute path to a kubeconfig file", node)
    return text


NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED = rf"({LABEL}(\.{LABEL})*/)?{NAME_PART}"  # Kubernetes label keys, loadBalancerClass
label_key = pattern(QUALIFIED, "a label key ([prefix/]name)")
label_value = pattern(rf"({NAME_PART})?", "a label value (at most 63 letters, digits, '-', '_', '.')")


def load_balancer_class(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text not in (INVALID, "") and not re.fullmatch(QUALIFIED, text):
        return issues.add(path, f"{quote(text)} is not a class name like example.com/lb", node)
    return text


def ip_text(issues: Issues, path: str, node: Node) -> Parsed:
    """A string meant to hold IP addresses, refusing IPv6 scope ids (`fe80::1%eth0`).

    ipaddress accepts any text after '%' (newlines included) and str() gives it back, so a
    scope id would carry arbitrary text into ExaBGP commands and config (docs/design.md invariant 4).
    """
    text = string(issues, path, node)
    if text is not INVALID and "%" in text:
        return issues.add(path, f"{quote(text)}: IPv6 scope ids (%...) are not supported", node)
    return text


def ip_address(issues: Issues, path: str, node: Node) -> Parsed:
    """An address we connect to or from: not loopback, unspecified or multicast."""
    text = ip_text(issues, path, node)
    if text is INVALID:
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return issues.add(path, f"{quote(text)} is not an IP address", node)
    for bad, what in (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_multicast, "multicast"),
        (address == ipaddress.IPv4Address("255.255.255.255"), "broadcast"),
    ):
        if bad:
            return issues.add(path, f"{text} is a {what} address", node)
    return address


def router_id(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text is INVALID or text == "auto":
        return None if text == "auto" else text
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return issues.add(path, f"must be auto or an IPv4 address, got {quote(text)}", node)
    if int(address) == 0:  # RFC 6286: the BGP Identifier is a non-zero 32-bit number
        return issues.add(path, "must not be 0.0.0.0", node)
    return address


def password_file(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    # The value is not echoed when it is not a path: it may be the password itself, typed
    # in the wrong field, and this message reaches terminals and logs (invariant 5).
    if not os.path.isabs(text):  # the daemon's working directory is not something to rely on
        return issues.add(
            path,
            "must be an absolute path to the file holding the password "
            "(the value is not shown: it may be the password itself)",
            node,
        )
    try:
        secrets.read_password_file(text)  # only to prove it can be read; the content is dropped
    except secrets.SecretError as error:
        return issues.add(path, str(error), node)
    return text


def password_env(issues: Issues, path: str, node: Node) -> Parsed:
    # Never echo the value (see password_file): a password like `hunter2` is a valid name too.
    name = string(issues, path, node)
    if name is INVALID:
        return name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return issues.add(
            path,
            "must be the name of an environment variable holding the password "
            "(the value is not shown: it may be the password itself)",
            node,
        )
    if name not in os.environ:
        return issues.add(path, "the environment variable it names is not set", node)
    try:
        secrets.read_password_env(name)
    except secrets.SecretError as error:
        return issues.add(path, str(error), node)
    return name


def host_port(issues: Issues, path: str, node: Node) -> Parsed:
    text = ip_text(issues, path, node)
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
        return issues.add(path, f"{quote(text)} is not host:port with an IP address host{hint}", node)
    if address.version == 6 and not text.startswith("["):
        return issues.add(path, f"{quote(text)}: write IPv6 in brackets, like [::]:7472", node)
    if not (DECIMAL.fullmatch(port) and 1 <= int(port) <= 65535):
        return issues.add(path, f"{quote(text)}: port must be 1..65535", node)
    return (str(address), int(port))


def community(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return Community.parse(text)
    except ValueError as error:
        if text.count(":") == 2:
            return issues.add(path, f"{quote(text)} is a large community: list it under largeCommunities", node)
        return issues.add(path, str(error), node)


def large_community(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return LargeCommunity.parse(text)
    except ValueError as error:
        return issues.add(path, str(error), node)


def any_community(issues: Issues, path: str, node: Node) -> Parsed:
    text = string(issues, path, node)
    if text is INVALID:
        return text
    try:
        return parse_any_community(text)
    except ValueError as error:
        return issues.add(path, str(error), node)


# Addresses a pool must never hand out: routers must not learn routes for them.
_SPECIAL_NETWORKS = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("0.0.0.0/8", "this-network"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        # IPv6 spellings of IPv4 addresses: a route for ::ffff:10.0.0.1 is one for 10.0.0.1 to
        # some stacks, so it would bypass every IPv4 rule here (and the pools' namespaces).
        ("::ffff:0:0/96", "IPv4-mapped IPv6"),
        ("::/96", "IPv4-compatible IPv6"),
    )
)


@dataclass(frozen=True)
class PoolEntry:
    """One item of pools[i].addresses: the CIDRs it stands for and its first/last address."""

    text: str
    first: IPAddress
    last: IPAddress
    networks: tuple


def pool_entry(issues: Issues, path: str, node: Node) -> Parsed:
    text = ip_text(issues, path, node)
    if text is INVALID:
        return text
    if "-" in text:
        low_text, high_text = (part.strip() for part in text.split("-", 1))
        try:
            low, high = ipaddress.ip_address(low_text), ipaddress.ip_address(high_text)
        except ValueError:
            return issues.add(path, f"{quote(text)} is not a range of two IP addresses (a-b)", node)
        if low.version != high.version:
            return issues.add(path, f"{quote(text)} mixes IPv4 and IPv6", node)
        if int(low) > int(high):  # as integers: of one version, checked above
            return issues.add(path, f"{quote(text)} is backwards: {low} comes after {high}", node)
        networks = tuple(ipaddress.summarize_address_range(low, high))
    else:
        try:
            networks = (ipaddress.ip_network(text),)
        except ValueError:
            try:
                loose = ipaddress.ip_interface(text)
            except ValueError:
                return issues.add(path, f"{quote(text)} is not a network", node)
            return issues.add(
                path,
                f"{quote(text)} has host bits set: did you mean {loose.network} "
                f"(or {loose.ip}/{loose.max_prefixlen} for the single address)?",
                node,
            )
        low, high = networks[0].network_address, networks[0].broadcast_address
    for special, what in _SPECIAL_NETWORKS:
        if (
            special.version == low.version  # so the integers below are of one version
            and int(special.network_address) <= int(high)
            and int(low) <= int(special.broadcast_address)
        ):
            return issues.add(
                path, f"{quote(text)} overlaps {special} ({what}), which cannot be a Service address", node
            )
    return PoolEntry(text, low, high, networks)


def labels(issues: Issues, path: str, node: Node) -> Parsed:
    """A Kubernetes matchLabels mapping, as sorted (key, value) pairs."""
    if node.kind == "scalar" and node.value is None:
        return ()
    if node.kind != "mapping":
        return issues.add(path, f"must be a mapping of label: value, got {show(node)}", node)
    result = {}
    for key, child in node.value.items():
        key_node = Node("scalar", node.key_lines[key], value=key, text=key)
        if label_key(issues, join(path, key), key_node) is INVALID:
            continue
        value = apply_rule(label_value, issues, join(path, key), child)
        if value is not INVALID:
            result[key] = value
    return freeze_pairs(result)


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_REQUIREMENT = section(
    [
        Field("key", "key", label_key, required=True),
        Field("operator", "operator", one_of({op: op for op in _OPERATORS}), required=True),
        Field("values", "values", list_of(label_value, unique=True)),
    ]
)


def label_requirement(issues: Issues, path: str, node: Node) -> Parsed:
    """A matchExpressions entry: In/NotIn need values, Exists/DoesNotExist take none (as Kubernetes)."""
    values = _REQUIREMENT(issues, path, node)
    if values is INVALID or not {"key", "operator"} <= values.keys():
        return INVALID
    operator, listed = values["operator"], values.get("values", ())
    if INVALID in listed:
        return INVALID
    if operator in ("In", "NotIn") and not listed:
        return issues.add(join(path, "values"), f"must list at least one value for operator {operator}", node)
    if operator in ("Exists", "DoesNotExist") and listed:
        return issues.add(join(path, "values"), f"must be empty for operator {operator}", node)
    return LabelRequirement(values["key"], operator, tuple(sorted(listed)))


_SELECTOR = section(
    [
        Field("matchLabels", "match_labels", labels),
        Field("matchExpressions", "match_expressions", list_of(label_requirement)),
    ]
)


def label_selector(issues: Issues, path: str, node: Node) -> Parsed:
    """A Kubernetes LabelSelector (MetalLB's nodeSelectors entries): matchLabels and matchExpressions."""
    values = _SELECTOR(issues, path, node)
    if values is INVALID or INVALID in values.get("match_expressions", ()):
        return INVALID
    return LabelSelector(values.get("match_labels", ()), values.get("match_expressions", ()))
