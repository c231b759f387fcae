"""Admin console behaviour beyond the table: what status/download/logs return, foreign certificates,
the CLI's exit codes and one-line errors, and that every command is audited."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from secagg.aggregator.admin_client import AdminClient, AdminError
from secagg.cli import main
from secagg.errors import ConfigError
from secagg.provision.kit import load_kit
from tests.admin.conftest import OWNER_TEXT, Console
from tests.integration.harness import make_tiny_job


def test_status_shows_job_round_heartbeats_and_declined_reasons(console: Console) -> None:
    job_id = console.fresh_job(with_round=False)
    fed = console.server.fed
    fed.heartbeat("site-1")
    fed.heartbeats.pop("site-2", None)
    fed.heartbeats.pop("site-3", None)
    fed.decline("site-3", job_id, 1, "mode_not_allowed", "policy allows only he")
    with console.client("admin@lead") as client:
        reply = client.status()
    job = reply["job"]
    assert (job["job_id"], job["state"], job["round"], job["attempt"], job["phase"]) == (
        job_id,
        "running",
        1,
        1,
        "ready",
    )
    assert job["submitter"] == OWNER_TEXT and job["org"] == "org-1"
    sites = {s["site"]: s for s in reply["sites"]}
    assert sites["site-1"]["connected"] and sites["site-1"]["last_heartbeat"]
    assert not sites["site-2"]["connected"] and sites["site-2"]["last_heartbeat"] is None
    assert [(d["site"], d["code"]) for d in reply["declined"]] == [("site-3", "mode_not_allowed")]


def test_member_aborting_another_orgs_job_is_refused_and_audited(console: Console) -> None:
    job_id = console.fresh_job()
    with console.client("member@org-2") as client, pytest.raises(AdminError) as err:
        client.abort(job_id)
    assert err.value.code == "forbidden"
    assert "member@org-2" in str(err.value)
    fed = console.server.fed
    assert fed.job is not None and fed.job.state == "running"
    last = console.audit()[-1]
    assert (last["event"], last["admin"], last["command"], last["job"]) == (
        "admin_refused",
        "member@org-2",
        "abort",
        job_id,
    )


def test_admin_certificate_from_another_ca_is_refused(console: Console, workspace: Path) -> None:
    """The shared ``workspace`` fixture is a different project with its own CA: its project admin's
    certificate does not get past the TLS handshake, let alone abort a job."""
    job_id = console.fresh_job()
    with console.client("admin@lead", ws=workspace) as client, pytest.raises(AdminError) as err:
        client.abort(job_id)
    assert err.value.code == "unavailable"
    fed = console.server.fed
    assert fed.job is not None and fed.job.job_id == job_id and fed.job.state == "running"


def test_site_certificate_is_not_an_admin(console: Console) -> None:
    job_id = console.fresh_job()
    client = AdminClient(load_kit(console.ws / "site-1"), console.target, timeout=20)
    with client, pytest.raises(AdminError) as err:
        client.abort(job_id)
    assert err.value.code == "not_admin"
    assert console.audit()[-1]["event"] == "admin_refused"


def test_unknown_job_is_not_found(console: Console) -> None:
    console.fresh_job()
    with console.client("admin@lead") as client, pytest.raises(AdminError) as err:
        client.abort("no-such-job")
    assert err.value.code == "no_such_job"


def test_submit_refuses_a_tampered_package(console: Console, tmp_path: Path) -> None:
    fed = console.server.fed
    job_id = console.fresh_job()
    fed.abort(job_id, by="test")
    bad = tmp_path / "job"
    shutil.copytree(console.job_dir, bad)
    (bad / "train.py").write_text("print('not what was signed')\n")
    with console.client("submitter@org-1") as client, pytest.raises(AdminError) as err:
        client.submit(bad)
    assert err.value.code == "job_rejected"
    assert str(err.value).startswith(f"{bad}: ")  # the refusal names the package the admin sent
    assert fed.job is not None and fed.job.job_id == job_id  # nothing new started
    assert console.audit()[-1]["event"] == "admin_failed"


@pytest.mark.parametrize("kind", ["fifo", "device", "missing", "too_large_file", "too_large_folder"])
def test_submit_refuses_what_is_no_package_before_sending(
    console: Console, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A FIFO (which would block the read), a link to /dev/zero (which would fill memory), or a
    package past the aggregator's limit is named and refused at the console: nothing is sent."""
    import os

    import secagg.aggregator.admin as admin_server

    fed = console.server.fed
    job_id = console.fresh_job()
    before = len(console.audit())
    target = tmp_path / "pkg.tar.gz"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target.symlink_to("/dev/zero")
    elif kind == "too_large_file":
        target.write_bytes(b"x" * 5000)
        monkeypatch.setattr(admin_server, "MAX_PACKAGE_BYTES", 4096)
    elif kind == "too_large_folder":
        target = tmp_path / "job"
        shutil.copytree(console.job_dir, target)
        (target / "blob.bin").write_bytes(os.urandom(8192))  # does not compress below the limit
        monkeypatch.setattr(admin_server, "MAX_PACKAGE_BYTES", 4096)
    with console.client("submitter@org-1") as client, pytest.raises(ConfigError) as err:
        client.submit(target)
    words = {
        "fifo": "is a named pipe (FIFO), not a job package",
        "device": "is a device, not a job package",
        "missing": "no such job folder or package",
        "too_large_file": "job package is 5000 bytes, over the limit of 4096",
        "too_large_folder": "packs to more than 4096 bytes",
    }[kind]
    assert str(err.value).startswith(str(target)) and words in str(err.value), err.value
    assert fed.job is not None and fed.job.job_id == job_id
    assert not [r for r in console.audit()[before:] if r.get("command") == "submit"]  # never sent


def test_download_he_job_gives_encrypted_aggregates_and_scales(console: Console, tmp_path: Path) -> None:
    fed = console.server.fed
    if fed.job is not None and fed.job.state == "running":
        fed.abort(fed.job.job_id, by="test")
    job_dir = make_tiny_job(tmp_path / "hejob", console.ws, mode="he", rounds=2, signer="submitter@org-1")
    job_id = fed.submit(job_dir, OWNER_TEXT)
    for r, scale in ((1, 1.25), (2, 0.8)):
        blob = fed.state_dir / "jobs" / job_id / f"round-{r}.bin"
        blob.write_bytes(bytes([r]) * 1000)  # stands in for a CKKS stream
        fed.store.add_round(job_id, r, 1, str(blob), scale, ["site-1"], {}, 0.1)
    with console.client("submitter@org-1") as client:
        header = client.download(job_id, tmp_path / "out")
    out = tmp_path / "out"
    assert header["mode"] == "he"
    assert (out / "round-1.ckks").read_bytes() == b"\x01" * 1000
    assert (out / "round-2.ckks").read_bytes() == b"\x02" * 1000
    meta = json.loads((out / "he.json").read_text())
    assert [(r["round"], r["scale"]) for r in meta["rounds"]] == [(1, 1.25), (2, 0.8)]
    assert not (out / "model.safetensors").exists()
    lines = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert lines and all(x["job"] == job_id for x in lines)
    assert any(x["event"] == "job_submitted" for x in lines)


def test_logs_follow_streams_new_lines_until_the_job_ends(console: Console) -> None:
    job_id = console.fresh_job()
    fed = console.server.fed
    sink = io.BytesIO()
    started = threading.Event()

    class Probe(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            started.set()
            return sink.write(data)

    def follow() -> None:
        with console.client("submitter@org-1") as client:
            client.logs(Probe(), job_id, follow=30)  # type: ignore[arg-type]

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert started.wait(60)  # generous: a loaded CI machine; returns as soon as the first line arrives
    fed.decline("site-2", job_id, 1, "budget_exhausted", "privacy budget exhausted")
    fed.abort(job_id, by="test")  # a terminal event ends the stream long before 30 s
    t.join(60)
    assert not t.is_alive()
    events = [json.loads(x)["event"] for x in sink.getvalue().splitlines()]
    assert events[0] == "job_submitted"
    assert events[-2:] == ["task_declined", "job_aborted"]
    assert len(events) == len(set(json.loads(x)["seq"] for x in sink.getvalue().splitlines()))


def test_cli_exit_codes_and_one_line_errors(console: Console, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = console.fresh_job()
    base = ["--target", console.target]
    assert main(["admin", "status", "--kit", str(console.ws / "admin@lead"), *base]) == 0
    out = capsys.readouterr().out
    assert job_id in out and "site-1" in out
    assert main(["admin", "list", "--json", "--kit", str(console.ws / "member@org-1"), *base]) == 0
    assert job_id in [j["job_id"] for j in json.loads(capsys.readouterr().out)["jobs"]]
    assert main(["admin", "abort", job_id, "--kit", str(console.ws / "member@org-1"), *base]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("secagg: forbidden: member@org-1")
    assert main(["admin", "abort", job_id, "--kit", str(console.ws / "submitter@org-1"), *base]) == 0
    assert f"aborted job {job_id}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["admin", "abort", "--kit", str(console.ws / "admin@lead")])
    assert usage.value.code == 2
    # a site kit is not an admin kit: refused before any connection
    assert main(["admin", "status", "--kit", str(console.ws / "site-1"), *base]) == 1
    assert "is a site kit" in capsys.readouterr().err


def test_provisioning_copies_the_table_into_the_aggregator_kit_only(console: Console) -> None:
    agg = yaml.safe_load((console.ws / "aggregator" / "kit.yaml").read_text())
    assert agg["authorization"]["member"]["abort"] == "none"
    assert agg["authorization"]["lead"]["abort"] == "own"
    site = yaml.safe_load((console.ws / "site-1" / "kit.yaml").read_text())
    assert site.get("authorization") is None


def test_a_follower_that_goes_away_releases_its_listener(console: Console) -> None:
    import time

    import grpc

    from secagg.transport.generated import secagg_pb2 as pb

    job_id = console.fresh_job()
    listeners = console.server.fed.audit.listeners
    before = len(listeners)
    with console.client("admin@lead") as client:
        request = pb.AdminRequest(command="logs", job_id=job_id, payload=b'{"follow": 300}')
        with pytest.raises(grpc.RpcError) as err:
            for _ in client._stub.Admin(request, timeout=1.5):
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 20
    while len(listeners) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(listeners) == before  # the server thread noticed and left, long before 300 s


def test_submit_streams_a_package_larger_than_one_grpc_message(console: Console, tmp_path: Path) -> None:
    """A job with a 10 MiB file does not fit the 8 MiB message limit; AdminUpload chunks it."""
    import os

    from secagg.jobs.sign import sign_job

    fed = console.server.fed
    big = tmp_path / "bigjob"
    shutil.copytree(console.job_dir, big)
    for name in ("manifest.json", "manifest.sig"):
        (big / name).unlink(missing_ok=True)
    (big / "weights.bin").write_bytes(os.urandom(10 << 20))
    sign_job(big, load_kit(console.ws / "submitter@org-1"))
    if fed.job is not None and fed.job.state == "running":
        fed.abort(fed.job.job_id, by="test")
    with console.client("submitter@org-1") as client:
        job_id = client.submit(big)
    assert fed.job is not None and fed.job.job_id == job_id
    assert fed.job.package.stat().st_size > 10 << 20


def test_a_job_every_site_refused_for_good_is_listed_failed_with_its_reason(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    """RELIABILITY.md F7 (b), through the running service and the CLI: no retry every 10 s for ever."""
    import time

    job_id = console.fresh_job(with_round=False)
    fed = console.server.fed
    for site in ("site-1", "site-2", "site-3"):
        fed.decline(site, job_id, 1, "tee_key_changed", "key_pin: aggregator keys changed within job")
    deadline = time.monotonic() + 120  # a bound for a loaded machine, not a measured time
    while fed.store.job(job_id).state != "failed" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.2)
    assert (
        main(["admin", "list", "--json", "--kit", str(console.ws / "admin@lead"), "--target", console.target])
        == 0
    )
    listed = {j["job_id"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert listed[job_id]["state"] == "failed", listed[job_id]
    failed = [r for r in console.audit() if r["event"] == "job_failed" and r.get("job") == job_id]
    assert [r["code"] for r in failed] == ["tee_key_changed"]
    assert not [r for r in console.audit() if r["event"] == "round_retry" and r.get("job") == job_id]
