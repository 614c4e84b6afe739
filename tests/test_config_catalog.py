"""The shipped configs pass check-config; every file in configs/bad/ fails with exactly its errors.

configs/bad/ is documentation as much as a test table: each file starts with a comment
saying what is wrong and `# expect: <error line>` lines, the exact output of check-config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bgpspeaker.config.load import ConfigError, config_warnings, load_config
from bgpspeaker.offline import check_config_command

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
BAD = sorted((ROOT / "configs" / "bad").glob("*.yaml"))


def expected(path: Path) -> list[str]:
    return [line[len("# expect: "):] for line in path.read_text().splitlines() if line.startswith("# expect: ")]


def test_the_catalogs_are_there():
    assert {p.name for p in SHIPPED} >= {"single-cluster.yaml", "east.yaml", "west.yaml", "central.yaml"}
    assert len(BAD) >= 30
    assert all(expected(path) for path in BAD), [p.name for p in BAD if not expected(p)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_is_valid_and_quiet(path, capsys):
    assert check_config_command(SimpleNamespace(config=str(path))) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}: "), out
    # Examples show good practice: they draw no warnings.
    assert config_warnings(load_config(path)) == []


def test_multi_cluster_configs_differ_only_where_they_must():
    east, west, central = (load_config(ROOT / "configs" / f"{name}.yaml") for name in ("east", "west", "central"))
    assert [c.cluster.name for c in (east, west, central)] == ["east", "west", "central"]
    assert east.pools == west.pools == central.pools
    assert east.tiers == west.tiers == central.tiers
    assert east.speaker == west.speaker == central.speaker
    assert [str(c.peers[0].address) for c in (east, west, central)] == ["10.99.1.1", "10.99.2.1", "10.99.3.1"]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_config_gives_exactly_its_errors(path, capsys):
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(issue) for issue in caught.value.issues] == expected(path)
    # check-config prints the same lines, then the summary.
    assert check_config_command(SimpleNamespace(config=str(path))) == 2
    lines = capsys.readouterr().out.splitlines()
    count = len(expected(path))
    assert lines == expected(path) + [f"invalid: {path}: {count} error{'s' if count != 1 else ''}"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bgpspeaker", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_cli_exit_0_for_a_valid_config():
    result = run_cli("check-config", "configs/single-cluster.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "ok: configs/single-cluster.yaml: 2 peers, 2 pools (325 addresses)\n"


def test_cli_exit_2_for_an_invalid_config():
    result = run_cli("check-config", "configs/bad/many-errors.yaml")
    assert (result.returncode, result.stderr) == (2, "")
    assert result.stdout.splitlines() == expected(ROOT / "configs/bad/many-errors.yaml") + [
        "invalid: configs/bad/many-errors.yaml: 4 errors"]


@pytest.mark.parametrize("content", [None, b"\x00\xff\xfe binary", b"cluster: [unclosed\n", b"- a list\n"])
def test_cli_exit_2_without_traceback_for_unusable_files(tmp_path, content):
    path = tmp_path / "speaker.yaml"
    if content is not None:
        path.write_bytes(content)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"invalid: {path}: 1 error"


def test_cli_prints_warnings_and_still_exits_0(tmp_path):
    path = tmp_path / "speaker.yaml"
    path.write_text((ROOT / "configs/east.yaml").read_text().replace("holdTime: 9 ", "holdTime: 0 "))
    result = run_cli("check-config", str(path))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "warning: peers[0].holdTime: 0 turns keepalives off: if this node dies, the router keeps its routes "
        "and never fails over to another cluster",
        f"ok: {path}: 1 peers, 1 pools (16 addresses)"]
