"""The sandbox's planning, parsing, admission check and descriptions (no confinement of this process),
and the policy's ``sandbox:`` section (schema, line-numbered errors, explain)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import secagg
from secagg.agent import sandbox
from secagg.agent.sandbox import (
    DEFAULT_REQUIRED,
    Availability,
    Confinement,
    Limits,
    SandboxUnavailable,
    describe,
    landlock,
    plan,
    require_available,
)
from secagg.cli import main
from secagg.errors import PolicyRefusal
from secagg.policy import check_policy_text
from secagg.policy.explain import describe_policy
from secagg.policy.model import SandboxSettings

REPO = Path(secagg.__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("state/jobs/j/pkg", "state/jobs/j/io", "state/jobs/j/scratch", "data", "kit"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        out[name.rsplit("/", 1)[-1]] = tmp_path / name
    out["state"], out["root"] = tmp_path / "state", tmp_path
    return out


def make(dirs: dict[str, Path], **settings: object) -> Confinement:
    return plan(
        job_root=dirs["pkg"],
        data_dir=dirs["data"],
        io_dir=dirs["io"],
        scratch_dir=dirs["scratch"],
        settings=SandboxSettings(**settings),  # type: ignore[arg-type]
    )


def covers(paths: tuple[str, ...], target: Path) -> bool:
    t = target.resolve()
    return any(t == Path(p) or Path(p) in t.parents for p in paths)


# --- plan() ------------------------------------------------------------------------------------------


def test_plan_opens_the_job_data_and_python_and_nothing_of_the_agent(dirs: dict[str, Path]) -> None:
    c = make(dirs)
    assert covers(c.read_only, dirs["pkg"]) and covers(c.read_only, dirs["data"])
    assert not covers(c.read_write, dirs["pkg"]) and not covers(c.read_write, dirs["data"])
    assert str(dirs["io"].resolve()) in c.read_write and str(dirs["scratch"].resolve()) in c.read_write
    for secret in (dirs["state"] / "he-secret.ctx", dirs["kit"] / "key.pem", dirs["state"] / "audit.jsonl"):
        assert not covers(c.read_only + c.read_write, secret), secret
    assert not covers(c.read_only + c.read_write, dirs["state"] / "jobs/other/pkg/train.py")
    # the Python installation, but not the repository the project is installed (editable) from
    import sys

    assert covers(c.read_only, Path(sys.base_prefix) / "lib") and covers(c.read_only, Path(sys.prefix))
    assert covers(c.read_only, Path(secagg.__file__))
    assert covers(c.read_only, Path(json.__file__)) and covers(c.read_only, Path(pytest.__file__))
    assert not covers(c.read_only + c.read_write, REPO / "demo-out/site-1/state/he-secret.ctx")
    assert not covers(c.read_only + c.read_write, REPO / "README.md")
    # no path is / or relative, and the planned system files are the documented ones
    for p in c.read_only + c.read_write:
        assert p.startswith("/") and p != "/"
    assert "/proc/self" in c.read_only and "/dev/null" in c.read_write
    for outside in (
        "/etc/passwd",
        "/etc/shadow",
        "/root/.ssh/id_rsa",
        "/tmp/elsewhere",
        "/home/x",
        "/var/lib",
    ):
        assert not covers(c.read_only + c.read_write, Path(outside)), outside


def test_plan_carries_limits_required_and_the_insecure_switch(dirs: dict[str, Path]) -> None:
    c = make(dirs, processes=8, memory_bytes=None, cpu_seconds=60)
    assert c.limits == Limits(
        memory_bytes=None, processes=8, open_files=1024, file_size_bytes=4 << 30, cpu_seconds=60
    )
    assert c.required == DEFAULT_REQUIRED and "netns" not in c.required and not c.insecure_unconfined
    assert "netns" in make(dirs, require_netns=True).required
    assert make(dirs, insecure_unconfined=True).insecure_unconfined


def test_plan_gpu_adds_the_nvidia_devices(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = dirs["root"] / "nvidia0"
    fake.write_text("")
    monkeypatch.setattr(sandbox, "_gpu_devices", lambda: [fake])
    assert str(fake) not in make(dirs).read_write
    assert str(fake.resolve()) in make(dirs, allow_gpu=True).read_write


def test_plan_refuses_missing_folders_and_root(dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        plan(
            job_root=dirs["root"] / "nope",
            data_dir=dirs["data"],
            io_dir=dirs["io"],
            scratch_dir=dirs["scratch"],
            settings=SandboxSettings(),
        )
    with pytest.raises(ValueError, match="may not be /"):
        plan(
            job_root=dirs["pkg"],
            data_dir=Path("/"),
            io_dir=dirs["io"],
            scratch_dir=dirs["scratch"],
            settings=SandboxSettings(),
        )


def test_scratch_env_points_temp_and_home_into_scratch(dirs: dict[str, Path]) -> None:
    env = sandbox.scratch_env(dirs["scratch"])
    assert env["TMPDIR"] == env["HOME"] == str(dirs["scratch"]) and env["USER"]


# --- to_json / from_json -----------------------------------------------------------------------------


def test_json_round_trip(dirs: dict[str, Path]) -> None:
    c = make(dirs, processes=3, insecure_unconfined=True)
    assert Confinement.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "not json{", "not JSON"),
        (lambda d: [], "must be an object"),
        (lambda d: {**d, "extra": 1}, "unknown keys"),
        (lambda d: {k: v for k, v in d.items() if k != "required"}, "missing keys"),
        (lambda d: {**d, "read_only": "/usr"}, "list of strings"),
        (lambda d: {**d, "read_only": ["usr"]}, "absolute path"),
        (lambda d: {**d, "read_write": ["/tmp/../etc"]}, "normalised"),
        (lambda d: {**d, "read_write": ["/"]}, "below /"),
        (lambda d: {**d, "read_only": ["/a\x00b"]}, "absolute path"),
        (lambda d: {**d, "required": ["landlock-fs", "magic"]}, "unknown protections"),
        (lambda d: {**d, "required": "seccomp"}, "list of strings"),
        (lambda d: {**d, "insecure_unconfined": "yes"}, "boolean"),
        (lambda d: {**d, "insecure_unconfined": 0}, "boolean"),
        (lambda d: {**d, "limits": {**d["limits"], "processes": -1}}, "positive integer"),
        (lambda d: {**d, "limits": {**d["limits"], "processes": True}}, "positive integer"),
        (lambda d: {**d, "limits": {**d["limits"], "cpu_seconds": 1.5}}, "positive integer"),
        (lambda d: {**d, "limits": {**d["limits"], "swap": 1}}, "unknown keys"),
        (lambda d: {**d, "limits": None}, "must be an object"),
    ],
)
def test_from_json_rejects_junk(dirs: dict[str, Path], mutate, message: str) -> None:
    data = json.loads(make(dirs).to_json())
    bad = mutate(data)
    with pytest.raises(ValueError, match=message):
        Confinement.from_json(bad if isinstance(bad, str) else json.dumps(bad))


# --- availability and admission ----------------------------------------------------------------------

FULL = Availability(
    landlock_abi=7,
    seccomp=True,
    netns=True,
    netns_detail="CLONE_NEWNET",
    process_limit="cgroup-v1-pids",
    no_new_privs=True,
)


def test_require_available_passes_on_a_full_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "available", lambda: FULL)
    require_available(SandboxSettings())
    require_available(SandboxSettings(require_netns=True))


def test_require_available_names_every_missing_protection(monkeypatch: pytest.MonkeyPatch) -> None:
    old_kernel = replace(FULL, landlock_abi=3, seccomp=False, process_limit=None)
    monkeypatch.setattr(sandbox, "available", lambda: old_kernel)
    with pytest.raises(SandboxUnavailable) as info:
        require_available(SandboxSettings())
    err = info.value
    assert isinstance(err, PolicyRefusal) and err.code == "sandbox_unavailable"
    assert set(err.missing) == {"landlock-net", "landlock-scope", "seccomp", "limits"}
    for word in (
        "landlock-net",
        "ABI 3",
        "landlock-scope",
        "seccomp",
        "limits",
        "RLIMIT_NPROC",
        "insecure_unconfined",
    ):
        assert word in str(err), word
    # without a process limit in the policy no process-limit mechanism is needed
    with pytest.raises(SandboxUnavailable) as info:
        require_available(SandboxSettings(processes=None))
    assert "limits" not in info.value.missing


def test_require_available_netns_only_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "available", lambda: replace(FULL, netns=False, netns_detail="EPERM"))
    require_available(SandboxSettings())
    with pytest.raises(SandboxUnavailable, match="netns") as info:
        require_available(SandboxSettings(require_netns=True))
    assert info.value.missing == ("netns",)


def test_insecure_unconfined_skips_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing = Availability(0, False, False, "none", None, False)
    monkeypatch.setattr(sandbox, "available", lambda: nothing)
    with pytest.raises(SandboxUnavailable):
        require_available(SandboxSettings())
    require_available(SandboxSettings(insecure_unconfined=True))


def test_availability_probe_on_this_host() -> None:
    a = sandbox.available()
    assert a.landlock_abi == landlock.abi_version()
    if a.landlock_abi >= 6:
        assert not {"landlock-fs", "landlock-net", "landlock-scope"} & set(a.missing())
    assert Availability(0, True, True, "", "x", True).missing().keys() == {
        "landlock-fs",
        "landlock-net",
        "landlock-scope",
    }


# --- describe ----------------------------------------------------------------------------------------


def test_describe_a_confinement(dirs: dict[str, Path]) -> None:
    c = make(dirs, processes=8, memory_bytes=1 << 30)
    text = "\n".join(describe(c))
    assert str(dirs["pkg"].resolve()) in text and str(dirs["io"].resolve()) in text
    assert "network: none" in text and "memory (address space) 1 GiB" in text and "processes 8" in text
    assert "enforced by" in text or "NOT ENFORCEABLE" in text
    assert "WARNING" not in text
    assert "WARNING: insecure_unconfined" in "\n".join(describe(replace(c, insecure_unconfined=True)))


def test_describe_settings_and_policy_explain() -> None:
    lines = describe(SandboxSettings())
    text = "\n".join(lines)
    assert "network: none" in text and "memory 8 GiB" in text and "256 processes" in text
    assert "sandbox_unavailable" in text and "INSECURE" not in text
    loud = describe(SandboxSettings(insecure_unconfined=True))
    assert any(line.lstrip().startswith("WARNING: INSECURE: sandbox.insecure_unconfined") for line in loud)


# --- the policy's sandbox: section -------------------------------------------------------------------

POLICY = "version: 1\nsigners: {submitters: [a]}\nmodes: [he]\n"


def test_policy_sandbox_defaults_and_values() -> None:
    policy, found = check_policy_text(POLICY)
    assert found == [] and policy is not None
    assert policy.sandbox == SandboxSettings() and not policy.sandbox.insecure_unconfined
    policy, found = check_policy_text(
        POLICY + "sandbox:\n  processes: 32\n  memory_bytes: null\n  require_netns: true\n"
    )
    assert found == [] and policy is not None
    assert policy.sandbox.processes == 32 and policy.sandbox.memory_bytes is None
    assert policy.sandbox.require_netns


def test_policy_sandbox_errors_have_line_numbers() -> None:
    text = POLICY + "sandbox:\n  processes: 0\n  insecure_unconfned: true\n  allow_gpu: maybe\n"
    policy, found = check_policy_text(text)
    assert policy is None
    got = {(i.line, i.path) for i in found}
    assert (5, "sandbox.processes") in got
    assert (6, "sandbox.insecure_unconfned") in got
    assert (7, "sandbox.allow_gpu") in got
    unknown = next(i for i in found if i.path == "sandbox.insecure_unconfned")
    assert "unknown key" in unknown.message and "insecure_unconfined" in unknown.hint


def test_policy_check_cli_reports_bad_sandbox_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(POLICY + "sandbox:\n  network: true\n")
    assert main(["policy", "check", str(p)]) == 1
    out, err = capsys.readouterr()
    assert f"{p}:5: sandbox.network: " in out + err


def test_policy_explain_shows_the_sandbox_and_warns_when_insecure() -> None:
    policy, _ = check_policy_text(POLICY)
    assert policy is not None
    text = "\n".join(describe_policy(policy))
    assert "Job code runs confined" in text and "network: none" in text and "INSECURE" not in text
    policy, _ = check_policy_text(POLICY + "sandbox: {insecure_unconfined: true}\n")
    assert policy is not None
    assert any("WARNING: INSECURE" in line for line in describe_policy(policy))


def test_policy_schema_mirrors_the_model() -> None:
    schema = json.loads((REPO / "policies/schema.json").read_text())["properties"]["sandbox"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(SandboxSettings.model_fields)
    defaults = SandboxSettings()
    for name, prop in schema["properties"].items():
        assert prop["default"] == getattr(defaults, name), name
