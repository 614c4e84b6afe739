"""Which ExaBGP config changes a live `reload` can apply, and whether ExaBGP applied one.

Why: restarting ExaBGP for any peer change resets every session on the node, and
without graceful restart the router withdraws every VIP of the node meanwhile (issue
17). ExaBGP 5.0.15 can do better, measured against FRR (integration/test_hitless.py;
README "Changing peers touches only those peers"): its `reload` command (= SIGUSR1)
re-reads the config file and, per neighbor block,
- a new neighbor: starts its session; its adj-rib-out starts empty (ExaBGP sends it
  none of the routes given to the other peers): the driver announces that peer's routes;
- a removed neighbor: closes its session and drops its adj-rib-out;
- a changed neighbor (hold time, password, port, TTL, peer ASN, source address...):
  tears down and re-opens that session only;
- an unchanged neighbor: untouched: the session stays up, no UPDATE is sent on it.

What a reload cannot do, so the driver restarts ExaBGP instead (`plan_reload` says
which, and the driver logs it):
- the `process` block (our relay): ExaBGP does not apply a changed process on reload
  (ExaBGP issue #1340, open in 5.x);
- the router ID, our ASN: they are part of every session's OPEN and of ExaBGP's own
  name for each neighbor (the key of its adj-rib-out), so every session has to be
  re-opened anyway, and a restart is the path whose outcome (an empty RIB, everything
  replayed) the driver already knows exactly. Graceful restart is per peer (a peer's
  own `gracefulRestart`, or the global default every peer then changes with): a reload;
- a peer renamed in our config while its address stays: the driver's bookkeeping is by
  name, ExaBGP's by address; a restart keeps the two from disagreeing;
- a reload ExaBGP did not take (the driver checks with `show neighbor configuration`):
  5.0.15 drops a reload that arrives while UPDATEs are queued for any peer, see
  ExabgpDriver._send_reload.

The plan is computed from the rendered texts (render.py is deterministic), so "what
changed" is the same text comparison that decides whether anything changed at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_NEIGHBOR = re.compile(r"^neighbor (\S+) \{$")
_DESCRIPTION = re.compile(r'^\s*description "([^"]*)";$')
# Lines that hold a value every session of the node shares (see the module docstring).
_GLOBAL = re.compile(r"^\s*(router-id|local-as) ")
# Simple `key value;` lines of our neighbor blocks that ExaBGP prints back verbatim in
# `show neighbor configuration`: seeing them proves the reload took this block.
_CHECKED = re.compile(
    r"^\s*(description|router-id|local-address|local-as|peer-as|connect|hold-time|"
    r"outgoing-ttl|md5-password) [^{}]*;$"
)


@dataclass(frozen=True)
class ReloadPlan:
    """`restart` is the reason a reload cannot do; else the neighbor addresses (text) that differ."""

    restart: Optional[str] = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def describe(self) -> dict[str, str]:
        return {"added": ",".join(self.added), "removed": ",".join(self.removed), "changed": ",".join(self.changed)}


def split(text: str) -> tuple[str, dict[str, list[str]]]:
    """(everything outside neighbor blocks, {neighbor address: the block's lines})."""
    head: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in text.splitlines():
        match = _NEIGHBOR.match(line)
        if match:
            current = blocks.setdefault(match.group(1), [])
            continue
        if current is not None:
            if line == "}":
                current = None
            else:
                current.append(line)
            continue
        if line.strip() and not line.startswith("#"):
            head.append(line)
    return "\n".join(head), blocks


def _description(block: list[str]) -> Optional[str]:
    for line in block:
        match = _DESCRIPTION.match(line)
        if match:
            return match.group(1)
    return None


def plan_reload(old: str, new: str) -> ReloadPlan:
    """How to go from the running config text `old` to `new` (both from render_config)."""
    old_head, old_blocks = split(old)
    new_head, new_blocks = split(new)
    if old_head != new_head:
        return ReloadPlan(restart="the relay process changed (ExaBGP does not reload a process)")
    kept = sorted(old_blocks.keys() & new_blocks.keys())
    for address in kept:
        before = [line for line in old_blocks[address] if _GLOBAL.match(line)]
        after = [line for line in new_blocks[address] if _GLOBAL.match(line)]
        if before != after:
            return ReloadPlan(restart="router ID or local ASN changed (every session re-opens)")
        if _description(old_blocks[address]) != _description(new_blocks[address]):
            return ReloadPlan(restart=f"the peer at {address} was renamed")
    return ReloadPlan(
        added=tuple(sorted(new_blocks.keys() - old_blocks.keys())),
        removed=tuple(sorted(old_blocks.keys() - new_blocks.keys())),
        changed=tuple(a for a in kept if old_blocks[a] != new_blocks[a]),
    )


def loaded(rendered: str, shown: list[str]) -> bool:
    """Whether ExaBGP's `show neighbor configuration` output `shown` is the config `rendered`:
    the same neighbors, each showing our block's checked lines verbatim."""
    _, want = split(rendered)
    _, have = split("\n".join(line.replace("\t", "    ").rstrip() for line in shown))
    if want.keys() != have.keys():
        return False
    for address, block in want.items():
        shown_lines = {line.strip() for line in have[address]}
        if any(line.strip() not in shown_lines for line in block if _CHECKED.match(line)):
            return False
    return True
