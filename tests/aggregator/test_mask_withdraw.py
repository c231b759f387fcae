"""A masked input the aggregator admitted but could not log (a full disk) is withdrawn (issue #18,
found by `secagg chaos --scenario disk-full --modes mask`: the mask phase counted site-1 as
uploaded, `mask_phase upload sites: [site-1]`, though its upload had been refused with
`storage_full` and no `upload_accepted` line was ever written). The mode must hold only what the
log holds: a withdrawn input is no survivor, and the site may send it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.aggregator.federation import Federation
from secagg.bundle import to_safetensors
from secagg.errors import StorageFull
from secagg.mask import MaskClient, MaskConfig, MaskServer
from secagg.mask.sim import make_participants
from secagg.provision.kit import load_kit
from tests.aggregator.conftest import chunks, header, open_uploads, update, write_job

CFG = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=16)


def test_a_withdrawn_masked_input_is_no_survivor_and_may_come_again() -> None:
    ca, parts = make_participants(5)
    names = [p.name for p in parts]
    clients = {p.name: MaskClient(p.name, p.key, p.cert, ca, CFG, "j", 1, sites=names) for p in parts}
    server = MaskServer(CFG, names, "j", 1, 4)
    for n in names:
        server.collect_keys(clients[n].advertise())
    roster = server.roster()
    for n in names:
        server.collect_shares(n, clients[n].share_keys(roster))
    routed = server.route_shares()
    masked = {n: clients[n].masked_input(np.full(4, 0.1), 0.5, routed[n]) for n in names}
    server.collect_masked(masked["site-1"])
    server.withdraw_masked("site-1")
    server.collect_masked(masked["site-1"])  # sent again: not "uploaded twice"
    server.withdraw_masked("site-1")
    for n in ("site-3", "site-4", "site-5"):
        server.collect_masked(masked[n])
    request = server.unmask_request()
    assert "site-1" not in request.survivors and "site-1" in request.dropped


def test_an_upload_that_cannot_be_logged_is_withdrawn_from_the_mode(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    fed.submit(write_job(tmp_path / "job", rounds=1), "tester")
    cur = open_uploads(fed)
    assert fed.mode is not None
    withdrawn: list[str] = []
    monkeypatch.setattr(fed.mode, "withdraw", lambda site, round_: withdrawn.append(site))
    real_append = fed.audit.append

    def full(event: str, **fields: Any) -> Any:
        if event == "upload_accepted":
            raise StorageFull("the disk is full")
        return real_append(event, **fields)

    monkeypatch.setattr(fed.audit, "append", full)
    good = to_safetensors(update(0.1))
    with pytest.raises(StorageFull):
        fed.accept_upload("site-1", header(fed, good), chunks(good))
    assert withdrawn == ["site-1"] and cur.uploads == {}
    fed.store.close()
