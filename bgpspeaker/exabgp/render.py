"""The ExaBGP configuration and environment for one node (what `bgpspeaker render-exabgp` prints).

Why a pure renderer: the same text is what the driver runs and what an operator sees
(`render-exabgp`, secrets masked), and "did the config change?" is a string comparison
that decides whether a reload must restart ExaBGP.

Choices, with the measurement behind each (docs/reference/exabgp-api.md):
- One `process` (our relay, `encoder json` — a process block without an encoder is a
  syntax error, §4.1) and, on every neighbor, `api { processes [...]; neighbor-changes; }`:
  the only way to get session events in 5.0 (§2).
- `manual-eor true`: by default ExaBGP sends End-of-RIB right after OPEN, before we
  replayed, and a graceful-restart helper then flushes the routes it kept (docs/reference/lab-notes.md:
  FIB empty ~0.5 s). The driver sends EOR after its replay.
- `group-updates true`: same-attribute NLRIs share an UPDATE (seen on the wire, §4.1).
- No `multihop` keyword exists in 5.0: ebgpMultiHop becomes `outgoing-ttl` (§4.2).
- Both unicast families on every session when the node has addresses of both: ExaBGP
  sends ipv6 unicast as MP_REACH over an IPv4 session (§5).
- Environment: acks on (they are our flow control), CLI pipes off (otherwise it logs
  about missing FIFOs), `tcp.bind` empty (active only: no listening port 179), no
  daemonizing, log to stderr at WARNING (docs/reference/lab-notes.md: ~15% less CPU than INFO), and
  `daemon.user` = the user we run as: as root ExaBGP otherwise setuid()s to `nobody` and
  the relay can no longer reach our socket (§4.3).
- Secrets: the MD5 password is read from `passwordFile` only when the config is for
  ExaBGP to run; printed configs get "********" and the file is not even opened.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
from typing import Optional

from bgpspeaker.config.schema import Config, PeerConfig
from bgpspeaker.model import IPAddress, NodeView, is_dns_subdomain

MASK = "********"
PROCESS_NAME = "bgpspeaker"
DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_SOCKET = "/run/bgpspeaker/exabgp.sock"

# What may appear unquoted in the config: a path or a word. Anything else would let a value
# end a statement (`;`, `}`) or a line.
# Always fullmatch: `$` also matches before a trailing newline, so `^...$` with match()
# let "path\n" through, and the newline into the config.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@-]+")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:-]+")


class RenderError(ValueError):
    """The node cannot run this config; the message names the field (`peers[0].passwordFile: ...`)."""


def _plain(address: IPAddress, where: str) -> IPAddress:
    """An address whose text is only an address: str() of a scoped IPv6 address prints its
    scope id verbatim (any text, newlines included), which would end up in the config."""
    if getattr(address, "scope_id", None) is not None:
        raise RenderError(f"{where}: {address.compressed} must not carry an IPv6 scope id")
    return address


def selected_peers(config: Config, node: NodeView) -> list[tuple[int, PeerConfig]]:
    """(index in config.peers, peer) for every peer whose nodeSelector matches the node."""
    return [(i, p) for i, p in enumerate(config.peers) if p.selects(node.labels)]


def router_id(config: Config, node: NodeView) -> ipaddress.IPv4Address:
    if config.speaker.router_id is not None:
        _plain(config.speaker.router_id, "speaker.routerID")
        return config.speaker.router_id
    address = node.address_of(4)
    if address is None:
        raise RenderError(f"speaker.routerID: auto needs an IPv4 address on node {node.name}, which has none")
    return address  # type: ignore[return-value]


def local_address(peer: PeerConfig, node: NodeView, index: int) -> IPAddress:
    if peer.source_address is not None:
        return _plain(peer.source_address, f"peers[{index}].sourceAddress")
    address = node.address_of(peer.address.version)
    if address is None:
        raise RenderError(
            f"peers[{index}].sourceAddress: node {node.name} has no IPv{peer.address.version} "
            f"address to reach {peer.address}; set sourceAddress"
        )
    return address


def families(node: NodeView, peer: PeerConfig) -> tuple[str, ...]:
    """ipv4 and/or ipv6 unicast: the families of the node's addresses (the session's own family at least)."""
    versions = {v for v in (4, 6) if node.address_of(v) is not None} | {peer.address.version}
    return tuple(f"ipv{v} unicast" for v in sorted(versions))


def has_password(peer: PeerConfig) -> bool:
    return bool(peer.password_file or getattr(peer, "password_env", None))


def read_password(peer: PeerConfig, index: int) -> str:
    """The peer's MD5 secret, via the config room's reader (file or environment)."""
    from bgpspeaker.config.secrets import SecretError, peer_password

    where = f"peers[{index}].{'passwordFile' if peer.password_file else 'passwordEnv'}"
    try:
        secret = peer_password(peer) or ""
    except SecretError as exc:
        raise RenderError(f"{where}: {exc}") from None
    # The secret goes between double quotes in ExaBGP's config, which has no escapes.
    if not secret or '"' in secret or "\\" in secret:
        raise RenderError(
            f"{where}: the password must not be empty nor contain quotes or backslashes "
            "(ExaBGP's config cannot hold them; its content is not shown)"
        )
    return secret


def _process_block(relay_socket: str, python: str) -> list[str]:
    for what, value in (("relay socket", relay_socket), ("python", python)):
        if not _SAFE_PATH.fullmatch(value):
            raise RenderError(f"{what} path {value!r} must be a plain path (letters, digits, _ . / + @ -)")
    return [
        f"process {PROCESS_NAME} {{",
        f"    run {python} -m bgpspeaker.exabgp.relay {relay_socket};",
        "    encoder json;",
        "}",
    ]


def render_config(
    config: Config, node: NodeView, relay_socket: str, *, mask_secrets: bool, python: Optional[str] = None
) -> str:
    """The ExaBGP config text for `node` (deterministic: equal inputs give equal text)."""
    if not is_dns_subdomain(node.name):  # it goes into a comment line: a newline would add statements
        raise RenderError(f"node name {node.name[:80]!r} is not a DNS subdomain (RFC 1123), as Kubernetes requires")
    out = [f"# bgpspeaker: ExaBGP config for node {node.name} (generated; do not edit)"]
    out += _process_block(relay_socket, python or sys.executable)
    rid = router_id(config, node)
    for index, peer in selected_peers(config, node):
        gr = peer.graceful_restart_time(config.exabgp.graceful_restart)
        out.append("")
        out.append(f"neighbor {_plain(peer.address, f'peers[{index}].address')} {{")
        if _SAFE_WORD.fullmatch(peer.name):
            out.append(f'    description "{peer.name}";')
        out.append(f"    router-id {rid};")
        out.append(f"    local-address {local_address(peer, node, index)};")
        out.append(f"    local-as {config.speaker.my_asn};")
        out.append(f"    peer-as {peer.asn};")
        out.append(f"    connect {peer.port};")
        out.append(f"    hold-time {peer.hold_time};")  # keepalives: a third of it (keepaliveTime, if set, says so)
        if peer.ebgp_multihop:
            out.append(f"    outgoing-ttl {peer.ebgp_multihop};")
        if has_password(peer):
            secret = MASK if mask_secrets else read_password(peer, index)
            out.append(f'    md5-password "{secret}";')
        out.append("    group-updates true;")
        out.append("    manual-eor true;")
        out.append("    family {")
        out += [f"        {family};" for family in families(node, peer)]
        out.append("    }")
        if gr > 0:
            out.append(f"    capability {{ graceful-restart {gr}; }}")
        out.append(f"    api {{ processes [ {PROCESS_NAME} ]; neighbor-changes; }}")
        out.append("}")
    return "\n".join(out) + "\n"


def exabgp_environment(user: Optional[str] = None, log_level: str = DEFAULT_LOG_LEVEL) -> dict[str, str]:
    """The `exabgp_*` variables for the child (merge into os.environ)."""
    if user is None:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            # A uid with no passwd entry (a container's runAsUser without one): ExaBGP refuses a
            # daemon.user it cannot look up, and only uses it as root (to drop to it), so leave
            # its default. Measured with ExaBGP 5.0.15 as uid 65532: "invalid value for daemon.user".
            user = None
    env = {
        "exabgp_api_ack": "true",
        "exabgp_api_cli": "false",
        "exabgp_api_encoder": "json",
        "exabgp_api_respawn": "true",
        "exabgp_tcp_bind": "",
        "exabgp_daemon_daemonize": "false",
        "exabgp_daemon_pid": "",
        "exabgp_log_destination": "stderr",
        "exabgp_log_level": log_level,
    }
    if user is not None:
        env["exabgp_daemon_user"] = user
    return env
