"""Configuration: the typed schema (schema.py) and the YAML loader with validation (load.py)."""

from bgpspeaker.config.schema import (  # noqa: F401  (re-exported: the package's public names)
    DEFAULT_TIERS,
    Advertisement,
    ClusterConfig,
    Config,
    ExabgpConfig,
    MetricsConfig,
    PeerConfig,
    PoolConfig,
    SpeakerConfig,
    TierAttributes,
)
