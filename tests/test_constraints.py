"""constraints.txt pins exactly the project's dependency tree, at the versions installed.

`make setup` and the image both install with `-c constraints.txt`; a constraint only
holds for what it names, so a dependency added to setup.cfg (or pulled in by a new
version of another) without its pin would float, in the suite and in the image. This
walks the installed tree from bgpspeaker's own requirements (runtime and test extra)
and compares it with the file, both ways.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def dependency_tree(root: str = "bgpspeaker", extras: tuple[str, ...] = ("test",)) -> dict[str, str]:
    """Every installed distribution reachable from `root`'s requirements: name -> version."""
    seen: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in environments):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen[key] = metadata.version(req.name)
                todo.append((req.name, tuple(req.extras)))
    return seen


def test_every_dependency_is_pinned_at_its_installed_version_and_nothing_else():
    pinned, installed = pins(), dependency_tree()
    problems = {
        "installed but not pinned": sorted(set(installed) - set(pinned)),
        "pinned but no longer a dependency": sorted(set(pinned) - set(installed)),
        "installed version differs from its pin (pin, installed)":
            {name: (pinned[name], version) for name, version in installed.items()
             if name in pinned and pinned[name] != version},
    }
    assert not any(problems.values()), f"constraints.txt: {problems}"
