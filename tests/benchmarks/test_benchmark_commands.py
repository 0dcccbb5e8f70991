"""The DP step benchmark's commands run and report what they say (no timing is asserted: the
numbers are this machine's; only that every variant is measured, side by side, on steady steps)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import dp_step_time, engine_ab

# engine_ab reads an earlier engine from the git history: only in a checkout (CI clones one)
IN_GIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=engine_ab.ROOT, capture_output=True).returncode == 0
needs_git = pytest.mark.skipif(not IN_GIT, reason="not a git checkout: engine_ab needs the history")


def test_steady_steps_are_the_gaps_after_the_first_step() -> None:
    assert dp_step_time._steady([10.0, 10.5, 11.25, 11.5]) == [0.5, 0.75, 0.25]
    with pytest.raises(RuntimeError, match="at least two"):
        dp_step_time._steady([10.0])


@pytest.mark.slow
def test_dp_step_time_measures_every_variant_of_a_family(tmp_path: Path) -> None:
    out = tmp_path / "dp.json"
    args = ["--quick", "--family", "tabular", "--modes", "ghost", "--repeats", "1", "--json", str(out)]
    assert dp_step_time.main(args) == 0
    (case,) = json.loads(out.read_text())["cases"]
    variants = case["variants"]
    fedshield = {"fedshield", "fedshield, reproducible noise", "fedshield, noise off (insecure)"}
    assert set(variants) == {"plain", "opacus-ghost", *fedshield}, variants
    for name, info in variants.items():
        assert "failed" not in info, (name, info)
        assert info["step_s"] > 0 and info["peak_rss_gib"] > 0
    assert variants["plain"]["ratio_to_plain"] == 1.0
    assert case["fedshield_mode"] in {"bk", "hooks", "functorch", "ew"}  # auto's measured choice


@needs_git
def test_engine_ab_compares_the_engine_with_an_earlier_revision(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_ab.main(["--against", "HEAD", "--family", "tabular", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "engine at HEAD" in out and "engine now" in out and "now / then, median over rounds" in out


@needs_git
def test_engine_ab_names_a_revision_it_cannot_read() -> None:
    with pytest.raises(SystemExit, match="no-such-revision"):
        engine_ab.main(["--against", "no-such-revision", "--family", "tabular", "--rounds", "1"])
