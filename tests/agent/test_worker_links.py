"""The job can make links in its I/O folder; the agent must never follow one (a confused deputy
would read a file only the agent may read, or overwrite one, on the job's behalf)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from secagg.agent.worker import TrainingFailed
from tests.agent.test_worker import GLOBAL_BYTES, job  # noqa: F401  (fixture)

SWAP_OUTPUT = """\
import os
from secagg import client

for task in client.tasks():
    g = client.receive_numpy()
    client.send({k: v + 1 for k, v in g.items()}, num_samples=7)
    # after sending: point the output at a file of the agent's of exactly the announced size
    out = os.path.join(os.environ["SECAGG_IO_DIR"], "local.safetensors")
    size = os.path.getsize(out)
    secret = os.path.join(str(task.data_dir), "..", "secret.bin")
    os.unlink(out)
    os.symlink(secret, out)
    (task.data_dir / "swapped").write_text(str(size))
"""


def test_an_output_swapped_for_a_link_is_refused_not_followed(job: Any) -> None:  # noqa: F811
    j = job(SWAP_OUTPUT)
    secret = j.root.parent / "secret.bin"
    # the agent's own file, made the size the script will announce, holding a valid model
    secret.write_bytes(GLOBAL_BYTES)
    with pytest.raises(TrainingFailed, match="local.safetensors is missing or not what it sent"):
        j.run(1)
    assert (j.data / "swapped").exists()


def test_a_link_planted_where_the_agent_writes_the_model_is_replaced_not_followed(job: Any) -> None:  # noqa: F811
    j = job(SWAP_OUTPUT)
    victim = j.root.parent / "victim.txt"
    victim.write_text("the agent's own file")
    j.io.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, j.io / "global.safetensors")
    for name in (".global.safetensors.tmp", "task.json"):
        os.symlink(victim, j.io / name)
    with pytest.raises(TrainingFailed):
        j.run(1)
    assert victim.read_text() == "the agent's own file"
    assert not (j.io / "global.safetensors").is_symlink()
    assert Path(j.io / "global.safetensors").read_bytes() == GLOBAL_BYTES
