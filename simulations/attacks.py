"""Simulated misbehaving sites, for robustness studies: a ClientApp mod that rewrites the
update a chosen site sends. Only the simulation harness installs it; an attacked site's
ledger still records its honest update, so ``fedshield audit`` flags the tampering.

Spec: ``"site-2:scale=-10"`` sends ``global + (-10) * (local - global)`` from site 2
(``scale=-1`` is a sign flip), ``"site-0:nan"`` sends NaNs, ``"site-3:drop=2"`` makes site 3
crash in round 2 (mid-protocol under secure aggregation), ``"site-1:crash"`` makes site 1 crash
in every round (a site that fails for good). Several: comma-separated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from common import records as rk
from common.errors import ConfigError


@dataclass(frozen=True)
class Attack:
    site: int
    scale: float | None  # None: send NaNs
    drop_round: int = 0  # > 0: the site drops out (crashes) in that round instead; EVERY_ROUND: in all


EVERY_ROUND = -1


def parse_attacks(spec: str) -> dict[int, Attack]:
    attacks = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        site, _, how = item.partition(":")
        try:
            site_id = int(site.removeprefix("site-"))
            if how == "nan":
                attacks[site_id] = Attack(site_id, None)
            elif how == "crash":
                attacks[site_id] = Attack(site_id, None, drop_round=EVERY_ROUND)
            elif how.startswith("drop="):
                attacks[site_id] = Attack(site_id, None, drop_round=int(how.removeprefix("drop=")))
            elif how.startswith("scale="):
                attacks[site_id] = Attack(site_id, float(how.removeprefix("scale=")))
            else:
                raise ValueError(how)
        except ValueError:
            raise ConfigError(
                f"attack must look like 'site-2:scale=-10', 'site-0:nan', 'site-3:drop=2' or 'site-1:crash', "
                f"got {item!r}"
            ) from None
    return attacks


def _maybe_drop(msg: Message, attack: Attack) -> None:
    """Crash in the attack's round: with SecAgg+, after the key exchange, when the masked update
    is due (the hardest moment for the protocol); without it, when training is asked."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    if RECORD_KEY_CONFIGS in msg.content:
        stage = msg.content[RECORD_KEY_CONFIGS].get(Key.STAGE)
        this_round = attack.drop_round == EVERY_ROUND or msg.metadata.group_id == str(attack.drop_round)
        if this_round and stage == Stage.COLLECT_MASKED_VECTORS:
            raise RuntimeError(f"site-{attack.site} dropped out in round {msg.metadata.group_id}")
    elif rk.CONFIG in msg.content:
        server_round = int(msg.content[rk.CONFIG].get(rk.SERVER_ROUND, 0))
        if attack.drop_round in (EVERY_ROUND, server_round):
            raise RuntimeError(f"site-{attack.site} dropped out in round {server_round}")


def attack_mod(spec: str) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    attacks = parse_attacks(spec)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        attack = attacks.get(int(context.node_config["partition-id"]))
        if attack is not None and attack.drop_round and msg.metadata.message_type == MessageType.TRAIN:
            _maybe_drop(msg, attack)
        reply = call_next(msg, context)
        if attack is not None and attack.drop_round:
            return reply
        if attack is None or msg.metadata.message_type != MessageType.TRAIN or rk.ARRAYS not in reply.content:
            return reply
        sent, base = reply.content[rk.ARRAYS], msg.content[rk.ARRAYS].to_numpy_ndarrays()
        forged = []
        for new, old in zip(sent.to_numpy_ndarrays(), base, strict=True):
            if attack.scale is None:
                forged.append(np.full_like(new, np.nan))
            else:
                forged.append((old + attack.scale * (new - old)).astype(new.dtype))
        reply.content[rk.ARRAYS] = ArrayRecord(
            array_dict={k: Array(a) for k, a in zip(sent.keys(), forged, strict=True)}
        )
        return reply

    return mod
