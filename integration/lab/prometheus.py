"""A real Prometheus server (Debian's `prometheus` package) inside a lab namespace.

Why in the speaker's namespace: it scrapes the daemon at 127.0.0.1:7472 exactly as a
Prometheus next to the node would, listens on that namespace's loopback (so parallel
test runs never compete for a port), and is reached from the test through a Forwarder.
It runs as root with its own storage directory under the test's temp dir; the lab
stops it by PID with everything else.

Scrape and evaluation intervals are 1 s so an alert's `for:` dominates the time it takes
to fire; the caller passes rules with short `for:` times (integration.monitoring.lab_rules).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

import yaml

from .nsforward import Forwarder
from .wait import wait_until

LISTEN = ("127.0.0.1", 9090)


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error (the message is Prometheus' own)."""


class Prometheus:
    def __init__(self, lab, ns: str, workdir: Path, targets: list[str], rules: str, interval: str = "1s") -> None:
        self.lab, self.ns, self.workdir = lab, ns, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yaml").write_text(rules)
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "rule_files": [str(workdir / "rules.yaml")],
                  "scrape_configs": [{"job_name": "bgpspeaker", "static_configs": [{"targets": targets}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc: Optional[subprocess.Popen] = None
        self.api: Optional[Forwarder] = None

    def start(self, timeout: float = 30) -> "Prometheus":
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus not found: `make setup` installs Debian's prometheus package")
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = self.lab.popen(self.ns, [
                binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LISTEN[0]}:{LISTEN[1]}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        api = self.api = Forwarder(None, ("127.0.0.1", 0), self.ns, LISTEN, name="prometheus").start()
        self.lab.on_close(api.close)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self._ready(), timeout, "prometheus ready")
        if proc.poll() is not None:
            raise AssertionError("prometheus exited:\n" + self.log())
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str) -> tuple[int, bytes]:
        assert self.api is not None, "start() first"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api.port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _ready(self) -> bool:
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) `expr` gives now; PrometheusError on any error."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise PrometheusError(f"{expr}: {answer.get('errorType')}: {answer.get('error')}")
        if answer.get("warnings"):
            raise PrometheusError(f"{expr}: warnings {answer['warnings']}")
        result = answer["data"]["result"]
        return result if answer["data"]["resultType"] in ("vector", "matrix") else [{"value": result}]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as /api/v1/alerts lists them."""
        status, body = self._get("/api/v1/alerts")
        assert status == 200, body
        return json.loads(body)["data"]["alerts"]

    def alert_state(self, name: str, **labels: str) -> str | None:
        """'pending', 'firing', or None when the alert is not active."""
        for alert in self.alerts():
            if alert["labels"].get("alertname") == name and all(alert["labels"].get(k) == v for k, v in labels.items()):
                return alert["state"]
        return None
