"""Why a training worker's script ended without an answer: the codes of the worker's ``error`` frame.

These travel only between the confined worker (:mod:`secagg.agent.worker_main`) and its agent
(:mod:`secagg.agent.worker`), which turns each into the reason code the site declines the round with;
they are spelled once here so the two sides cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerError(StrEnum):
    EXIT = "exit"  # the script called sys.exit / raised SystemExit
    NO_SEND = "no_send"  # a one-round script finished without client.send()
    NO_SEND_LOOP = "no_send_loop"  # a loop script asked for its next task without client.send()
    LIMIT = "limit"  # MemoryError inside the worker
    SCRIPT_ERROR = "script_error"  # the script raised
