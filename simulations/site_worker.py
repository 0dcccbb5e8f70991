"""What the harness runs inside each Ray worker that hosts simulated sites.

Flower's actors log "Manually terminating ClientAppActor" (a WARNING) whenever the engine stops
one, and the worker forwards it to the user's terminal twice (Flower's handler, and the root
handler Opacus installs): routine, not news. Workers start with ``FLWR_LOG_LEVEL=ERROR`` (an idle
actor has only Flower's handler), and :func:`quiet_flower` lowers Flower's logger to errors in a
worker that has hosted a site. Errors still show; the driver's own Flower log is untouched.

The same mod hides one library notice that is not ours to fix and says nothing to a user: peft
0.21 calls a transformers 5 API that is deprecated (``is_gradient_checkpointing``), printed
once per worker with LoRA. Only that message, only that category; every other warning shows.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

from flwr.app import Context, Message

WORKER_ENV = {"FLWR_LOG_LEVEL": "ERROR"}


def quiet_flower(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A ClientApp mod (outermost): Flower's warnings in this worker process become silent."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    return call_next(message, context)
