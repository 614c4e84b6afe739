"""TCP MD5 passwords: read from a file or an environment variable, checked, never shown.

docs/design.md invariant 5: secrets come from files or the environment and never reach logs,
/status, metrics or a printed config. So the config holds only *where* a password is
(`PeerConfig.password_file` / `password_env`), the loader checks at load time that it
can be read (a typo'd path should fail `check-config`, not the BGP session an hour
later), and every message here names the place, never the content.

One trailing newline is stripped: `echo secret > file` and Kubernetes Secrets created
from files both end with one, and no router password does.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from bgpspeaker.config.schema import PeerConfig

# TCP_MD5SIG_MAXKEYLEN in linux/include/uapi/linux/tcp.h: the kernel refuses longer keys.
MAX_KEY_BYTES = 80
_READ_LIMIT = 4096  # enough to tell "too long" without reading a huge file


class SecretError(ValueError):
    """A password that cannot be used. The message names where it is, never what it is."""


def read_password_file(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SecretError(f"{path} does not exist") from None
    except OSError as error:
        raise SecretError(f"cannot read {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the loader forever
        raise SecretError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_READ_LIMIT)
    except OSError as error:
        raise SecretError(f"cannot read {path}: {error.strerror}") from None
    return _checked(raw, path)


def read_password_env(name: str) -> str:
    raw = os.environ.get(name)
    if raw is None:
        raise SecretError(f"environment variable {name} is not set")
    return _checked(os.fsencode(raw), f"environment variable {name}")


def peer_password(peer: PeerConfig) -> Optional[str]:
    """The peer's MD5 password, or None when it has none. For the ExaBGP renderer only."""
    if peer.password_file:
        return read_password_file(peer.password_file)
    if peer.password_env:
        return read_password_env(peer.password_env)
    return None


def _checked(raw: bytes, where: str) -> str:
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise SecretError(f"{where} is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise SecretError(f"{where} is longer than {MAX_KEY_BYTES} bytes, the kernel's TCP MD5 key limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{where} is not UTF-8 text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise SecretError(f"{where} contains a line break or another control character")
    # ExaBGP's config holds the password between double quotes and has no escapes.
    if '"' in text or "\\" in text:
        raise SecretError(f"{where} contains a double quote or a backslash, which ExaBGP's config cannot hold")
    return text
