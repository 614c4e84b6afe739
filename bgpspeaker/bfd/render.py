"""bfdd's configuration for one node: a pure function of the config and the node.

One `peer` per BGP peer of this node (its nodeSelector matches) that names a
`bfdProfile`, from the address the BGP session uses (sourceAddress or the node's
address of the peer's family, exactly as ExaBGP's config), with the profile rendered
as an FRR `profile` block. A peer with ebgpMultiHop is a multi-hop BFD session (RFC
5883: UDP 4784, `minimum-ttl` applies); every other one is single-hop (RFC 5881: UDP
3784, TTL 255). Echo mode loops our packets through the router's forwarding plane
(FRR's note: only reliable for IPv4 unless the router is FRR too).

Text, not a structure, is compared to decide whether bfdd must restart on a reload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bgpspeaker.config.schema import BfdProfile, Config
from bgpspeaker.exabgp.render import local_address, selected_peers
from bgpspeaker.model import IPAddress, NodeView


@dataclass(frozen=True)
class BfdPeer:
    name: str  # the BGP peer's name (labels metrics and /status)
    address: IPAddress
    local: IPAddress
    multihop: bool
    profile: BfdProfile


def bfd_peers(config: Config, node: NodeView) -> tuple[BfdPeer, ...]:
    """This node's BFD sessions; RenderError (a field path) if the node has no address for one."""
    return tuple(
        BfdPeer(
            peer.name,
            peer.address,
            local_address(peer, node, index),
            peer.ebgp_multihop is not None,
            config.bfd_profile(peer.bfd_profile),
        )
        for index, peer in selected_peers(config, node)
        if peer.bfd_profile is not None
    )


def _profile_lines(profile: BfdProfile, multihop: bool) -> list[str]:
    lines = [
        f" profile {profile.name}",
        f"  receive-interval {profile.receive_interval}",
        f"  transmit-interval {profile.transmit_interval}",
        f"  detect-multiplier {profile.detect_multiplier}",
    ]
    if profile.echo_mode:
        lines += [
            "  echo-mode",
            f"  echo transmit-interval {profile.echo_interval}",
            f"  echo receive-interval {profile.echo_interval}",
        ]
    if profile.passive_mode:
        lines.append("  passive-mode")
    if multihop:
        lines.append(f"  minimum-ttl {profile.minimum_ttl}")
    return lines + [" exit"]


def render_bfdd_config(peers: tuple[BfdPeer, ...]) -> str:
    """The whole bfdd config file (FRR 8.4 syntax, checked with `bfdd -C`).

    A profile used by both kinds of session is rendered once per kind (`NAME` and
    `NAME-multihop`) because FRR accepts `minimum-ttl` only where every user is multi-hop.
    """
    out = ["! rendered by bgpspeaker: edits are overwritten", "bfd"]
    blocks: dict[str, list[str]] = {}
    sessions = []
    for peer in sorted(peers, key=lambda p: p.name):
        key = f"{peer.profile.name}-multihop" if peer.multihop else peer.profile.name
        if key not in blocks:
            blocks[key] = _profile_lines(replace(peer.profile, name=key), peer.multihop)
        hop = " multihop" if peer.multihop else ""
        sessions += [
            f" peer {peer.address.compressed}{hop} local-address {peer.local.compressed}",
            f"  profile {key}",
            " exit",
        ]
    for key in sorted(blocks):
        out += blocks[key]
    out += sessions
    out += ["exit", ""]
    return "\n".join(out)
