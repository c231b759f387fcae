"""``plain``: the weighted update as safetensors. Baselines only; a site policy must allow it."""

from __future__ import annotations

from secagg.agent.modes.base import Outgoing, Sent, StoredGlobal, upload
from secagg.agent.protect import protect_plain_windows


class PlainMode(StoredGlobal):
    name = "plain"

    def protect_and_send(self, out: Outgoing) -> Sent:
        return upload(self.ctx, out, self.name, protect_plain_windows(out.bspec, out.weighted.windows()))
