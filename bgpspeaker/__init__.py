"""bgpspeaker: LoadBalancer IPs for bare-metal Kubernetes, announced over BGP.

The policy (which address a Service gets, what each node announces) lives in pure
modules: config, model, allocator, planner, reconciler. Everything that does I/O
(exabgp/, kube/, daemon, http) is a thin shell around them.
"""

__version__ = "0.1.0"
