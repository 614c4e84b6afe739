"""The daemon's Kubernetes side: client setup, informers, leader election, status and Events.

Everything here does I/O with the blocking official client, in threads; results reach
the daemon's asyncio loop (the one owner of the state) through `call_soon_threadsafe`.
Policy stays in the pure allocator and planner.
"""
