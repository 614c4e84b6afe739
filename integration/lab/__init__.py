"""The network lab: namespaces, real routers (FRR, BIRD), and helpers to wait on them."""
