"""`python -m integration.kubeapi`: one emulator as its own process, for the lab.

Prints `ready URL` on stdout once listening, so a parent can wait for that line instead
of polling the port; stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import yaml

from .emulator import KubeEmulator


def load_objects(path: str) -> list[dict]:
    """Objects from a multi-document YAML file; a `List` document contributes its items."""
    objs: list[dict] = []
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            objs.extend(doc.get("items") or [] if doc.get("kind", "").endswith("List") else [doc])
    return objs


async def serve(args: argparse.Namespace) -> None:
    emu = KubeEmulator(history_limit=args.history, bookmark_interval=args.bookmark_interval)
    if args.objects:
        emu.load_objects(load_objects(args.objects))
    await emu.start(args.host, args.port)
    if args.kubeconfig:
        emu.write_kubeconfig(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {emu.url}", flush=True)
    await stop.wait()
    await emu.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.kubeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (see the ready line)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this emulator here")
    parser.add_argument("--objects", help="YAML file of objects to load before serving")
    parser.add_argument("--history", type=int, default=100_000, help="watch events kept for resuming")
    parser.add_argument("--bookmark-interval", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (OSError, yaml.YAMLError, ValueError) as exc:
        print(f"kubeapi: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
