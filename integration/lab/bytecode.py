"""The checkout's Python code compiled once, as the image ships it (Containerfile: compileall).

Why: this machine's environment, like CI's, sets PYTHONDONTWRITEBYTECODE, so a process
started from the checkout compiles every module of ours it imports, at every start. For
what `bgpspeaker run` imports that is 678 M instructions of its 2,276 M (callgrind; ~0.1 s
of CPU here), 360 M before the allocation records, with half the lines (docs/performance.md,
"Compiled, as the image runs it"). A deployed daemon never pays it, since its image is
compiled at build time, so the cold-start benchmark measured a cost that is not there, and
one that grew with the code. The test suite starts hundreds of daemons and emulators.

The variable only stops Python from writing bytecode: what is written here is read, and a
module edited afterwards is checked against its source (mtime and size) and compiled
again in memory, as always. `__pycache__/` is in .gitignore.
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bgpspeaker", "integration", "testkit")


def compile_checkout() -> bool:
    """Write the bytecode of our packages (only what is missing or stale); True if all compiled."""
    return all(compileall.compile_dir(REPO / name, quiet=1) for name in PACKAGES)
