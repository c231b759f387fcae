"""One object per aggregation mode at the site: ``MODES[name](ctx)``.

Adding a mode is adding one file here and one entry below; nothing else of the agent branches on the
mode's name.
"""

from __future__ import annotations

from secagg.agent.modes.base import ModeContext, Outgoing, Sent, SiteMode, Task
from secagg.agent.modes.he import HeMode
from secagg.agent.modes.mask import MaskMode
from secagg.agent.modes.plain import PlainMode
from secagg.agent.modes.tee import TeeMode
from secagg.agent.modes.tee_mask import TeeMaskMode

MODES: dict[str, type[PlainMode] | type[HeMode] | type[MaskMode] | type[TeeMode]] = {
    "plain": PlainMode,
    "he": HeMode,
    "mask": MaskMode,
    "tee": TeeMode,
    "tee-mask": TeeMaskMode,
}


def make_mode(name: str, ctx: ModeContext) -> SiteMode:
    try:
        return MODES[name](ctx)
    except KeyError:
        raise ValueError(f"no site-side implementation of mode {name!r}") from None


__all__ = ["MODES", "ModeContext", "Outgoing", "Sent", "SiteMode", "Task", "make_mode"]
