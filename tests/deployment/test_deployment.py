"""A real deployment on loopback: a SuperLink with TLS and SuperNode authentication, two
registered SuperNodes, a two-round DP job with secure aggregation launched with `flwr run`,
the ledgers audited; an
unregistered node is refused and a node without the CA certificate cannot connect.

It runs scripts/deploy-loopback.sh, the same commands the README's deployment section shows
(a test below keeps the two in step)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import run_deploy_loopback

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "deploy-loopback.sh"


def test_tls_authenticated_deployment_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "deployment"
    proc = run_deploy_loopback(work)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert re.search(r"run \d+: finished:completed", out)
    assert "VERIFIED" in out and out.count("  OK") == 2
    metrics = json.loads((work / "server" / "metrics.json").read_text())
    server_rounds = [
        json.loads(line) for line in (work / "server" / "server" / "ledger.jsonl").read_text().splitlines()
    ]
    masked = [e for e in server_rounds if e["kind"] == "round"]
    assert len(masked) == 2 and all(e["secure_aggregation"] and len(e["updated"]) == 2 for e in masked)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(0 < s["epsilon"] <= 1.0 for s in metrics["final"]["sites"].values())
    for site in ("site-0", "site-1"):  # each site's ledger and key live at the site, under its own name
        entries = [json.loads(line) for line in (work / "sites" / site / "ledger.jsonl").read_text().splitlines()]
        assert [(e["kind"], e["round"]) for e in entries] == [
            ("reserve", 1),
            ("train", 1),
            ("reserve", 2),
            ("train", 2),
        ]
        assert all(
            e["ledger"] == site and e.get("policy", {}).get("origin", "node-config") == "node-config" for e in entries
        )
        assert all(e["noise"]["source"] == "os-entropy-reseeded" for e in entries)
        assert (work / "sites" / site / "site.key").stat().st_mode & 0o777 == 0o600
    assert "unregistered SuperNode: exit 1 (Failed to activate SuperNode)" in out
    assert "SuperNode without the CA certificate: exit 1 (CERTIFICATE_VERIFY_FAILED)" in out
    # Nothing left running: every process the script started was stopped by its id.
    leftovers = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if str(work).encode() in (proc_dir / "cmdline").read_bytes():
                leftovers.append(proc_dir.name)
        except OSError:
            continue
    assert leftovers == []


def _commands(text: str) -> list[str]:
    """Command lines (continuations joined, variables kept) that start a Flower process."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        " ".join(line.split())
        for line in joined.splitlines()
        if re.match(
            r"\s*(FLWR_HOME=\S+ )?(setsid |timeout \d+ )?(flower-superlink|flower-supernode|flwr|fedshield)\b", line
        )
    ]


def test_readme_deployment_commands_are_the_tested_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployment") :]
    block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
    script = " ".join(_commands(SCRIPT.read_text()))
    for command in _commands(block):
        assert command in script, f"README command not exercised by {SCRIPT.name}: {command}"
