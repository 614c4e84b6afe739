"""IPAM over the configured pools (pure). Result types only so far; the algorithm lands next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bgpspeaker.model import IPAddress


@dataclass(frozen=True)
class Assignment:
    pool: str
    addresses: tuple[IPAddress, ...]  # one per IP family; dual-stack Services get two


@dataclass(frozen=True)
class Refusal:
    reason: str  # a short code, MetalLB-like vocabulary: notInPool, poolNotAllowedForNamespace, ...
    message: str  # what a user reads in the Event and in `explain`


@dataclass(frozen=True)
class Allocation:
    assigned: Mapping[str, Assignment]  # by namespace/name
    refused: Mapping[str, Refusal]  # by namespace/name
