"""The authorization table row by row, through the real gRPC Admin RPC with each admin's own kit.

The target job belongs to ``submitter@org-1`` (a lead of org-1). Each cell says whether that admin's
command on that job is allowed (1) or refused (0); for ``list``, allowed means the job is listed.
"""

from __future__ import annotations

import io

import pytest

from secagg.aggregator.admin_client import AdminError
from tests.admin.conftest import ADMINS, OWNER, Console

COMMANDS = ("submit", "list", "status", "abort", "download", "logs")
EXPECT: dict[str, tuple[int, int, int, int, int, int]] = {
    #                   submit list status abort download logs
    "admin@lead": (1, 1, 1, 1, 1, 1),  # project_admin: everything, any job
    "orgadmin@org-1": (1, 1, 1, 1, 1, 1),  # org_admin of the job's org: manages it
    "orgadmin@org-2": (1, 1, 1, 0, 0, 0),  # org_admin elsewhere: views all, manages only own org
    "submitter@org-1": (1, 1, 1, 1, 1, 1),  # lead who submitted it: manages own jobs
    "lead2@org-1": (1, 1, 1, 0, 0, 0),  # another lead of the org: views the org's, manages only own
    "lead@org-2": (1, 0, 0, 0, 0, 0),  # lead of another org: cannot even see it
    "member@org-1": (0, 1, 1, 0, 0, 1),  # member of the org: views and reads logs only
    "member@org-2": (0, 0, 0, 0, 0, 0),  # member of another org: nothing on this job
}
CASES = [(admin, cmd, bool(EXPECT[admin][i])) for admin in EXPECT for i, cmd in enumerate(COMMANDS)]


def test_table_covers_every_admin() -> None:
    assert set(EXPECT) == set(ADMINS)


@pytest.mark.parametrize(("admin", "command", "allowed"), CASES, ids=[f"{a}-{c}" for a, c, _ in CASES])
def test_role_command(console: Console, tmp_path, admin: str, command: str, allowed: bool) -> None:  # type: ignore[no-untyped-def]
    job_id = console.fresh_job()
    fed = console.server.fed
    before = len(console.audit())
    with console.client(admin) as client:
        try:
            if command == "submit":
                fed.abort(job_id, by="test")  # one job at a time; the submitted one replaces it
                new_id = client.submit(console.job_dir)
                assert fed.job is not None and fed.job.job_id == new_id
                row = fed.store.job(new_id)
                assert row is not None and row.submitter.startswith(f"{admin} (")  # owner = the admin
            elif command == "list":
                ids = [j["job_id"] for j in client.list()]
                assert (job_id in ids) is allowed
            elif command == "status":
                reply = client.status()
                if reply["job"] is None:  # the current job is not theirs: only the sites are shown
                    raise AdminError("hidden", code="no_such_job")
                assert reply["job"]["job_id"] == job_id
            elif command == "abort":
                client.abort(job_id)
                assert fed.job is not None and fed.job.state == "aborted"
            elif command == "download":
                header = client.download(job_id, tmp_path / "dl")
                assert (tmp_path / "dl" / "model.safetensors").read_bytes() == (
                    console.job_dir / "model.safetensors"
                ).read_bytes()
                assert header["job_id"] == job_id
            elif command == "logs":
                sink = io.BytesIO()
                client.logs(sink, job_id)
                assert f'"job":"{job_id}"'.encode() in sink.getvalue()
            outcome = "allowed"
        except AdminError as exc:
            # a role that may not do this at all is forbidden; a job outside the role's scope is
            # answered as no job, naming neither its owner nor its org
            assert exc.code in ("forbidden", "no_such_job"), exc
            assert OWNER not in str(exc) and "belongs to" not in str(exc), exc
            outcome = "refused"
    if command == "list":
        return  # a list is filtered, never refused, for these roles
    assert outcome == ("allowed" if allowed else "refused")
    if not allowed:  # a refused command changed nothing
        assert fed.job is not None and fed.job.job_id == job_id
        assert fed.job.state == ("aborted" if command == "submit" else "running")
    # every command, allowed or refused, is an audit line with the admin's certificate identity
    lines = [r for r in console.audit()[before:] if r.get("command") == command and r.get("admin") == admin]
    assert lines, f"no audit line for {admin} {command}"
    org, role = ADMINS[admin]
    assert lines[0]["event"] == ("admin_command" if allowed else "admin_refused")
    assert (lines[0]["org"], lines[0]["role"]) == (org, role)


@pytest.mark.parametrize("command", ["status", "abort", "download", "logs"])
def test_a_job_outside_scope_answers_as_a_missing_one(console: Console, tmp_path, command: str) -> None:  # type: ignore[no-untyped-def]
    """A lead of another org cannot tell a real job id from a made-up one (issue #18 audit, G5):
    both answers carry the same code and the same words, with the id they named; the audit log
    still records the attempt on the real job as a refusal, with whose job it was."""
    job_id = console.fresh_job()
    fake = "f" * len(job_id)
    answers = []
    with console.client("lead@org-2") as client:
        for target in (job_id, fake):
            with pytest.raises(AdminError) as err:
                if command == "status":
                    client.status(target)
                elif command == "abort":
                    client.abort(target)
                elif command == "download":
                    client.download(target, tmp_path / "dl")
                else:
                    client.logs(io.BytesIO(), target)
            answers.append((err.value.code, str(err.value).replace(target, "<id>")))
    assert answers[0] == answers[1]
    assert answers[0][0] == "no_such_job" and "that you may see" in answers[0][1]
    fed = console.server.fed
    assert fed.job is not None and fed.job.state == "running"
    assert not (tmp_path / "dl").exists()
    refused = [r for r in console.audit() if r.get("event") == "admin_refused" and r.get("job") == job_id]
    assert refused and "belongs to submitter@org-1 of org org-1" in refused[-1]["reason"]
