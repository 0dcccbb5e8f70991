"""Simulated misbehaving sites, for robustness studies: a ClientApp mod that rewrites the
update a chosen site sends. Only the simulation harness installs it; an attacked site's
ledger still records its honest update, so ``fedshield audit`` flags the tampering.

Spec: ``"site-2:scale=-10"`` sends ``global + (-10) * (local - global)`` from site 2
(``scale=-1`` is a sign flip), ``"site-0:nan"`` sends NaNs. Several: comma-separated.
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


def parse_attacks(spec: str) -> dict[int, Attack]:
    attacks = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        site, _, how = item.partition(":")
        try:
            site_id = int(site.removeprefix("site-"))
            if how == "nan":
                attacks[site_id] = Attack(site_id, None)
            elif how.startswith("scale="):
                attacks[site_id] = Attack(site_id, float(how.removeprefix("scale=")))
            else:
                raise ValueError(how)
        except ValueError:
            raise ConfigError(f"attack must look like 'site-2:scale=-10' or 'site-0:nan', got {item!r}") from None
    return attacks


def attack_mod(spec: str) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    attacks = parse_attacks(spec)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        attack = attacks.get(int(context.node_config["partition-id"]))
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
