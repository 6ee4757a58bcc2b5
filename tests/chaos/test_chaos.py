"""Short fault-injection run (the long one is `make chaos`): no unexplained overlap of
leadership, strictly increasing tokens, one leader soon after the faults stop."""

from __future__ import annotations

import os
from pathlib import Path

from .harness import HANDOVER_FAULTS, run


def test_short_fault_injection_run(tmp_path: Path) -> None:
    seed = int(os.environ.get("LEADERD_CHAOS_SEED", "7"))
    seconds = float(os.environ.get("LEADERD_CHAOS_SECONDS", "25"))
    report = run(tmp_path, seconds, seed, plot=tmp_path / "timeline.png")
    print(report.summary())
    assert len(report.terms) >= 2, report.summary()
    assert report.faults, report.summary()
    assert not report.violations, "\n".join(report.violations)


def test_short_fault_injection_run_with_sentinel_failovers(tmp_path: Path) -> None:
    seed = int(os.environ.get("LEADERD_CHAOS_SEED", "7"))
    report = run(tmp_path, 20, seed, n=3, topology="sentinel")
    print(report.summary())
    assert any(f.kind == "failover" for f in report.faults), report.summary()
    assert report.terms, report.summary()
    assert not report.violations, "\n".join(report.violations)


def test_short_run_with_the_hand_over_faults(tmp_path: Path) -> None:
    """A restart from a snapshot taken before hand-overs, a PSUBSCRIBE * client, a
    frozen follower while the leader resigns, CLIENT PAUSE WRITE while it resigns."""
    seed = int(os.environ.get("LEADERD_CHAOS_SEED", "7"))
    report = run(tmp_path, 20, seed, kinds=HANDOVER_FAULTS)
    print(report.summary())
    assert {f.kind for f in report.faults} & {"snapshot_restart", "frozen_follower"}
    assert len(report.terms) >= 2, report.summary()
    assert not report.violations, "\n".join(report.violations)
