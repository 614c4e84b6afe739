"""Build the bgpspeaker image here, where no container registry can be reached.

    python -m integration.image            # what `make image` runs: build, print the size
    python -m integration.image --base docker.io/library/python:3.11-slim-bookworm

The Containerfile takes its base as a build argument. Its default (the public slim
Python image) comes from a registry; here the base is made from Debian's own packages
instead: `debootstrap` a minimal bookworm with Python, `podman import` it. That base is
made once and kept in podman's image store under a tag naming its recipe, so a changed
recipe makes a new one and an unchanged one is reused.

`pip` inside a build step has no index configuration or certificates of its own, so the
wheels (the project and every dependency, pinned by constraints.txt) are built on the
host into a small build context (.cache/image/context/) that the Containerfile copies
from. The dependencies' wheels are kept there until constraints.txt changes; the
project's wheel is rebuilt every time (a few seconds).

`podman run` does not work on this kernel (crun: cgroups in hybrid mode), so the image
test runs what the image ships through `podman image mount` + chroot instead: see
`ImageRoot` and integration/test_image.py. Sizes and build times: README, "The container image".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "image"
CONTEXT = CACHE / "context"
CONTAINERFILE = REPO / "Containerfile"
CONSTRAINTS = REPO / "constraints.txt"
TAG = "localhost/bgpspeaker:dev"
# The image test's own tag, one per checkout: the engineers' worktrees share one podman
# store, and one checkout's build must not replace (and remove) the image another one's test has mounted.
TEST_TAG = f"localhost/bgpspeaker:test-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"
SUITE = "bookworm"
# Debian's python3 is what the public base has too (3.11); python3-venv for the build stage's venv.
BASE_PACKAGES = ("python3", "python3-venv")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ImageError(RuntimeError):
    """A build step failed; the message carries the command and the end of its output."""


def _run(argv: list[str], *, timeout: float = 900, cwd: Path | None = None, quiet: bool = True,
         env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, timeout=timeout, text=True, env=env,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-3000:]
        raise ImageError(f"{' '.join(argv)}: exit {proc.returncode}\n{tail}")
    return proc.stdout or ""


def apt_mirror() -> str:
    """The Debian mirror apt already uses (its sources), so debootstrap fetches from the same place."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if not path.exists():
            continue
        text = path.read_text()
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+", text, re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def base_tag() -> str:
    """The Debian-made base's tag: the recipe's hash, so a changed recipe is a new base."""
    recipe = json.dumps([SUITE, "minbase", BASE_PACKAGES]).encode()
    return f"localhost/bgpspeaker-base:{SUITE}-{hashlib.sha256(recipe).hexdigest()[:10]}"


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def ensure_base(log=print) -> str:
    """The Debian-made base image: reused if present, else debootstrap + podman import (1-4 min)."""
    tag = base_tag()
    if image_exists(tag):
        return tag
    root = CACHE / "rootfs"
    _unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    log(f"making the base {tag} with debootstrap (once)")
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
              SUITE, str(root), apt_mirror()], timeout=1200)
        # apt's lists and caches have no use in an image that never runs apt
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for child in (root / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"podman import: {imported.stderr.strip()}")
    finally:
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
    log(f"base made in {time.monotonic() - started:.0f} s")
    return tag


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def prepare_context(python: str = sys.executable, log=print) -> Path:
    """The build context: constraints.txt, wheels/deps (pinned dependencies), wheels/project.

    Wheels are built with `python` (the venv's, the same Python minor version as both bases:
    3.11). The dependency wheels are kept while constraints.txt and setup.cfg are unchanged."""
    deps, project = CONTEXT / "wheels" / "deps", CONTEXT / "wheels" / "project"
    stamp = CONTEXT / "wheels" / ".deps-digest"
    digest = _digest(CONSTRAINTS, REPO / "setup.cfg")
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    # SOURCE_DATE_EPOCH: the same sources make the same wheel, so podman's layer cache holds
    _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(project), str(REPO)], timeout=300,
         env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    if not (stamp.exists() and stamp.read_text() == digest):
        log("building the dependency wheels (pinned by constraints.txt)")
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        (wheel,) = project.glob("*.whl")
        _run([python, "-m", "pip", "wheel", "-q", "--wheel-dir", str(deps), "-c", str(CONSTRAINTS), str(wheel)],
             timeout=600)
        for own in deps.glob("bgpspeaker-*.whl"):
            own.unlink()
        stamp.write_text(digest)
    shutil.copy(CONSTRAINTS, CONTEXT / "constraints.txt")
    return CONTEXT


def build(base: str | None = None, tag: str = TAG, log=print, quiet: bool = True) -> str:
    """Build the image (podman's layer cache makes an unchanged rebuild take seconds); return its tag."""
    base = base or ensure_base(log)
    context = prepare_context(log=log)
    previous = image_id(tag)
    # --isolation chroot: the default (an OCI runtime) cannot start containers on this kernel.
    _run(["podman", "build", "--isolation", "chroot", "--layers", "--build-arg", f"BASE={base}",
          "-f", str(CONTAINERFILE), "-t", tag, str(context)], timeout=1200, quiet=quiet)
    if previous and previous != image_id(tag):
        # the image this build replaced, untagged now: every edit-and-test would leave one behind.
        # (Not `podman image prune`: it would take the build stages' cache with it.)
        subprocess.run(["podman", "rmi", previous], capture_output=True)
    return tag


# tag -> (the `python -m integration.image` started by build_early, the file it writes its output to)
_EARLY: dict[str, tuple[subprocess.Popen, Path]] = {}


def build_early(tag: str) -> None:
    """Start building `tag` now, for a test that needs the image later.

    A cold build (the base's debootstrap, the dependency wheels) is ~90 s spent mostly
    waiting on the Debian mirror, PyPI and the disk; started when the test session
    begins it overlaps the unit tests instead of adding to the suite's time (CI's budget
    is 20 minutes). A process of its own, in its own process group: its output stays out
    of the tests' captured output, and a session that ends without waiting for it stops
    it whole (stop_early_builds), rather than leaving debootstrap or podman running."""
    if tag in _EARLY:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    output = CACHE / f"early-build-{os.getpid()}.log"
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "integration.image", "--tag", tag], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _EARLY[tag] = (proc, output)


def built(tag: str, log=print, timeout: float | None = None) -> str:
    """The image `tag`: the build_early one once it is done (its output logged; its failure
    raised here, with the end of that output), else a build made now."""
    early = _EARLY.pop(tag, None)
    if early is None:
        return build(tag=tag, log=log)
    proc, output = early
    started = time.monotonic()
    try:
        returncode = proc.wait(timeout)
    except BaseException:  # interrupted, or out of time: the build goes too
        _stop(proc)
        raise
    finally:
        text = output.read_text(errors="replace") if output.exists() else ""
        output.unlink(missing_ok=True)
    for line in text.splitlines():
        log(line)
    if returncode != 0:
        raise ImageError(f"python -m integration.image --tag {tag} (started with the session): "
                         f"exit {returncode}\n{text[-3000:]}")
    log(f"(built beside the tests before this one; waited {time.monotonic() - started:.0f} s for it)")
    return tag


def stop_early_builds() -> None:
    """Stop the early builds nobody waited for (a session that ended first: -x, an interrupt)."""
    while _EARLY:
        _, (proc, output) = _EARLY.popitem()
        _stop(proc)
        output.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen) -> None:
    """The build's whole process group (pip, debootstrap, podman under it): SIGTERM first,
    which lets debootstrap unmount what it mounted in the root it builds (its exit trap),
    then SIGKILL for whatever is left after 30 s. Returns once the group is empty."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # the leader reaped: a zombie still counts as a member
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    proc.poll()


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever is mounted under `root`, deepest first. debootstrap mounts /proc
    and /sys (and may bind /dev) inside the root it builds; a build killed half way leaves
    them, and removing that root through them would remove the host's."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def image_id(tag: str) -> str | None:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def inspect(tag: str = TAG) -> dict:
    """`podman image inspect`: Config (User, Env, Entrypoint, Cmd, WorkingDir), Size, ..."""
    return json.loads(_run(["podman", "image", "inspect", tag]))[0]


def size_mb(tag: str) -> float:
    return inspect(tag)["Size"] / 1e6


@dataclass
class ImageRoot:
    """The image's filesystem, mounted by `podman image mount`: run what it ships with chroot.

    `argv()` wraps a command the way the kubelet would start it in the DaemonSet's pod: a
    private mount namespace, the image's root read-only (readOnlyRootFilesystem), /proc and
    /dev, the pod's volumes mounted at their mountPaths, the image's environment plus the
    pod's, as the image's user. Run it inside a lab namespace (`ip netns exec`)."""

    tag: str
    path: Path

    @classmethod
    def mount(cls, tag: str = TAG) -> "ImageRoot":
        return cls(tag, Path(_run(["podman", "image", "mount", tag]).strip()))

    def unmount(self) -> None:
        subprocess.run(["podman", "image", "unmount", self.tag], capture_output=True)

    def config(self) -> dict:
        return inspect(self.tag)["Config"]

    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config().get("Env") or [])

    def user(self) -> str:
        """`UID:GID` of the image's USER (numeric, as a pod's runAsUser is)."""
        return self.config().get("User") or "0:0"

    def resolve(self, program: str) -> Path | None:
        """Where the image's PATH finds `program` (an executable file), as a path on the host."""
        candidates = [program] if "/" in program else \
            [f"{d}/{program}" for d in self.env().get("PATH", "").split(":") if d]
        for candidate in candidates:
            host = self.path / candidate.lstrip("/")
            if host.is_file() and os.access(host, os.X_OK):
                return host
        return None

    def argv(self, command: list[str], *, volumes: dict[str, tuple[str, bool]] | None = None,
             tmpfs: tuple[str, ...] = (), env: dict[str, str] | None = None, user: str | None = None) -> list[str]:
        """argv of a shell that mounts and then execs `command` chrooted into the image.

        `volumes`: mountPath -> (host dir, read-only); `tmpfs`: mountPaths of emptyDirs."""
        root = str(self.path)
        steps = ["set -e",
                 # the image's root read-only, as readOnlyRootFilesystem makes it
                 f"mount --bind {q(root)} {q(root)}",
                 f"mount -o remount,bind,ro {q(root)}",
                 f"mount -t proc proc {q(root)}/proc",
                 f"mount --rbind /dev {q(root)}/dev"]
        for target in tmpfs:  # an emptyDir is world-writable (0777)
            steps.append(f"mount -t tmpfs -o mode=0777 tmpfs {q(root + target)}")
        # parents before children (/etc/bgpspeaker before /etc/bgpspeaker/secrets)
        for target, (source, read_only) in sorted((volumes or {}).items()):
            steps.append(f"mount --bind {q(source)} {q(root + target)}")
            if read_only:
                steps.append(f"mount -o remount,bind,ro {q(root + target)}")
        environment = {**self.env(), **(env or {})}
        steps.append(f"exec chroot --userspec={q(user or self.user())} {q(root)} /usr/bin/env -i "
                     + " ".join(q(f"{k}={v}") for k, v in environment.items())
                     + ' "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps), "sh", *command]

    def exec_argv(self, pid: int, command: list[str], *, env: dict[str, str] | None = None,
                  user: str | None = None) -> list[str]:
        """argv that runs `command` inside the running container `pid` (started from `argv()`),
        as a preStop exec hook runs: its mount and network namespaces, its root, its user."""
        uid, _, gid = (user or self.user()).partition(":")
        environment = {**self.env(), **(env or {})}
        return ["nsenter", f"--target={pid}", "--mount", "--net", "--root", "--wd",
                f"--setuid={uid}", f"--setgid={gid or uid}", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), *command]


def q(text: str) -> str:
    import shlex
    return shlex.quote(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.image", description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="base image (default: a Debian-made bookworm base, made once)")
    parser.add_argument("--tag", default=TAG)
    args = parser.parse_args(argv)
    started = time.monotonic()
    tag = build(args.base, args.tag, quiet=False)
    print(f"built {tag} in {time.monotonic() - started:.0f} s: {size_mb(tag):.0f} MB "
          f"(base {args.base or base_tag()}: {size_mb(args.base or base_tag()):.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
