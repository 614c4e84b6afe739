"""The suite's output: one Markdown table (results.md), results.json, and PNG plots.

Kept apart from the measuring code so the table's shape is decided in one place and the
plots can be redrawn from results.json without re-running the lab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from integration.bench.scenarios import Section


def _met(value) -> str:
    return "—" if value is None else ("✅ met" if value else "❌ missed")


def table(sections: list[Section]) -> str:
    lines = ["| # | measurement | bgpspeaker | reference (same run) | ratio / delta | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for section in sections:
        for r in section.rows:
            lines.append(f"| {r.bench} | {r.measure} | {r.value} | {r.reference} | {r.ratio} | {r.goal} | "
                         f"{_met(r.met)} |")
    return "\n".join(lines)


def notes(sections: list[Section]) -> str:
    out = []
    for section in sections:
        for r in section.rows:
            if r.note:
                out.append(f"- {r.bench}, {r.measure}: {r.note}")
    return "\n".join(out)


def profiles(sections: list[Section]) -> str:
    out = []
    for section in sections:
        for name, rows in section.profiles.items():
            out.append(f"\n**{name}** — py-spy, % of the busy samples\n")
            out.append("| function (file) | self % | inclusive % |\n|---|---|---|")
            for fn, self_pct, incl in rows:
                out.append(f"| `{fn.replace('|', '/')}` | {self_pct:.1f} | {incl:.1f} |")
    return "\n".join(out)


def markdown(sections: list[Section], machine: dict, mode: str, seconds: float, command: str,
             plots: list[str]) -> str:
    m = machine
    parts = [
        "# bgpspeaker system benchmarks — latest results",
        "",
        f"Mode `{mode}`, suite runtime {seconds / 60:.1f} min. Machine: {m['nproc']} × {m['cpu']}, "
        f"{m['memory']}, kernel {m['kernel']}, Python {m['python']}; {m.get('frr', 'FRR ?')}, "
        f"{m.get('bird', 'BIRD ?')}, ExaBGP {m.get('exabgp', '?')}; load average (1/5/15 min) at start "
        f"{' '.join(m['loadavg'])}, at the end {' '.join(m.get('loadavg_end', ['?']))}. "
        f"Source: bgpspeaker at {m.get('source', '?')}. "
        f"Reproduce: `{command}` (as root).",
        "",
        "Every row is measured side by side with its reference in the same run, against the same "
        "FRR router (bgpd + zebra) in a network namespace; the daemon is a real `bgpspeaker run` "
        "with its emulated Kubernetes API in its node's namespace. Timings on 2 shared cores: "
        "compare the ratios, not the absolutes.",
        "",
        table(sections),
        "",
        "Notes:",
        "",
        notes(sections),
    ]
    checks = [(k, v) for s in sections for k, v in s.checks.items()]
    if checks:
        parts += ["", "Correctness checks: " + "; ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks)]
    prof = profiles(sections)
    if prof:
        parts += ["", "## Profiles (py-spy, the daemon while it carried the load)", prof]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def to_json(sections: list[Section], machine: dict, mode: str, seconds: float) -> dict:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    return {"mode": mode, "seconds": seconds, "machine": machine, "sections": [
        {"name": s.name, "seconds": s.seconds, "checks": s.checks,
         "numbers": {k: clean(v) for k, v in s.numbers.items()},
         "rows": [r.__dict__ for r in s.rows],
         "samples": {k: [clean(v) for v in vs] for k, vs in s.samples.items()},
         "profiles": {k: [list(r) for r in v] for k, v in s.profiles.items()}} for s in sections]}


def plot(sections: list[Section], out: Path) -> list[str]:
    """latency.png (distributions as CDFs) and scale.png (cold start vs N); the file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_name = {s.name: s for s in sections}
    dists = [(s.name, k, v) for s in sections if s.name in ("event", "failover", "churn")
             for k, v in s.samples.items() if v]
    if dists:
        panels = [n for n in ("event", "failover", "churn") if any(d[0] == n for d in dists)]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
        titles = {"event": "1. event → FRR RIB", "failover": "3. failover to the secondary",
                  "churn": "6. churn: change → RIB under load"}
        for ax, name in zip(axes[0], panels):
            for _, label, values in (d for d in dists if d[0] == name):
                xs = sorted(v * 1000 for v in values)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})",
                        linestyle="--" if label.startswith("raw") else "-")
            ax.set_xscale("log")
            ax.set_xlabel("milliseconds (log)")
            ax.set_ylabel("fraction ≤ x")
            ax.set_title(titles[name])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    cold = by_name.get("cold")
    if cold and cold.samples.get("N"):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        n = cold.samples["N"]
        for key, style in (("daemon", "o-"), ("daemon feed", "o:"), ("raw", "s-"), ("raw feed", "s:"),
                           ("bird", "^-"), ("bird feed", "^:")):
            if cold.samples.get(key):
                label = {"daemon": "bgpspeaker: spawn → all routes", "daemon feed": "bgpspeaker: session up → all",
                         "raw": "raw ExaBGP: spawn → all", "raw feed": "raw ExaBGP: session up → all",
                         "bird": "BIRD static: spawn → all", "bird feed": "BIRD static: session up → all"}[key]
                ax.plot(n, cold.samples[key], style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Services (= /32 routes)")
        ax.set_ylabel("seconds until all routes are in FRR's RIB")
        ax.set_title("2. cold start at scale")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=110)
        plt.close(fig)
        written.append("scale.png")
    return written


def write(sections: list[Section], machine: dict, mode: str, seconds: float, out: Path, command: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(sections, out)
    text = markdown(sections, machine, mode, seconds, command, plots)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(to_json(sections, machine, mode, seconds), indent=1,
                                                 ensure_ascii=False))
    return text
