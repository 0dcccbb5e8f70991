"""A site's DP-SGD history, kept in the node's persistent ``context.state``.

The history lives as long as the site's participation in the job: it is read back and
extended every round, never reset, so the epsilon a site reports after round r is the
composition of all of its steps so far.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from common.accounting import DpSgdEvent

_KEY = "fedshield.privacy"


def load_history(state: RecordDict) -> list[DpSgdEvent]:
    if _KEY not in state:
        return []
    rec = state[_KEY]
    return [
        DpSgdEvent(float(s), float(q), int(t)) for s, q, t in zip(rec["noise"], rec["rate"], rec["steps"], strict=True)
    ]


def save_history(state: RecordDict, history: list[DpSgdEvent]) -> None:
    state[_KEY] = ConfigRecord(
        {
            "noise": [e.noise_multiplier for e in history],
            "rate": [e.sample_rate for e in history],
            "steps": [e.steps for e in history],
        }
    )
