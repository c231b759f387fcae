"""`secagg provision --deploy`: the CLI flag, and deployment files written all-or-nothing with the kits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secagg.cli import main
from secagg.errors import ConfigError
from secagg.provision.deploy import TARGETS, parse_targets, provision_with_deploy
from secagg.provision.kit import load_kit
from secagg.provision.project import AdminSpec
from tests.conftest import make_project


def _project_file(tmp_path: Path, **update: object) -> Path:
    project = make_project().model_copy(update=update)
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(project.model_dump(mode="json")))
    return path


def test_cli_writes_kits_and_all_three_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    rc = main(
        [
            "provision",
            str(_project_file(tmp_path)),
            "-o",
            str(ws),
            "--deploy",
            "compose,k8s,systemd",
            "--image",
            "reg.example/secagg:1",
        ]
    )
    assert rc == 0
    assert (ws / "deploy" / "compose" / "compose.yaml").is_file()
    assert (ws / "deploy" / "k8s" / "aggregator" / "deployment.yaml").is_file()
    assert sorted(p.parent.name for p in (ws / "deploy" / "systemd").glob("*/secagg-agent.service")) == [
        "site-1",
        "site-2",
        "site-3",
    ]
    assert "reg.example/secagg:1" in (ws / "deploy" / "compose" / "compose.yaml").read_text()
    assert load_kit(ws / "site-1", kind="site").identity.name == "site-1"
    out = capsys.readouterr().out
    assert "wrote startup kit" in out and "compose.yaml" in out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".provision")] == []


def test_cli_writes_only_the_targets_asked_for(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert main(["provision", str(_project_file(tmp_path)), "-o", str(ws), "--deploy", "systemd"]) == 0
    assert sorted(p.name for p in (ws / "deploy").iterdir()) == ["systemd"]


def test_without_deploy_no_deployment_files(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert main(["provision", str(_project_file(tmp_path)), "-o", str(ws)]) == 0
    assert not (ws / "deploy").exists() and (ws / "site-1" / "key.pem").is_file()


def test_unknown_target_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "provision",
                str(_project_file(tmp_path)),
                "-o",
                str(tmp_path / "ws"),
                "--deploy",
                "compose,helm",
            ]
        )
    assert exc.value.code == 2
    assert "unknown deployment target(s) helm" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_parse_targets_keeps_a_fixed_order_and_refuses_empty() -> None:
    assert parse_targets(" systemd,compose ") == ("compose", "systemd")
    with pytest.raises(ConfigError, match="none given"):
        parse_targets(",")


def test_failure_while_writing_deploy_files_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = make_project().model_copy(update={"admins": [AdminSpec(name="deploy", org="x")]})
    ws = tmp_path / "ws"
    with pytest.raises(ConfigError, match="named 'deploy'"):
        provision_with_deploy(bad, ws, TARGETS)
    assert list(tmp_path.iterdir()) == []


def test_failure_with_force_keeps_the_existing_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    provision_with_deploy(make_project(), ws, ["compose"])
    before = (ws / "site-1" / "cert.pem").read_bytes()
    bad = make_project().model_copy(update={"admins": [AdminSpec(name="deploy", org="x")]})
    with pytest.raises(ConfigError):
        provision_with_deploy(bad, ws, TARGETS, force=True)
    assert (ws / "site-1" / "cert.pem").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]
    # and the CLI reports it as one line, exit 1
    path = tmp_path.parent / f"{tmp_path.name}-project.yaml"
    path.write_text(yaml.safe_dump(bad.model_dump(mode="json")))
    try:
        assert main(["provision", str(path), "-o", str(ws), "--force", "--deploy", "k8s"]) == 1
    finally:
        path.unlink()
    assert capsys.readouterr().err.startswith("secagg: config: a participant is named 'deploy'")


def test_non_empty_workspace_needs_force(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "keep").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        provision_with_deploy(make_project(), ws, TARGETS)
    assert sorted(p.name for p in ws.iterdir()) == ["keep"]


def _parses(argv: list[str]) -> None:
    from secagg.cli import build_parser

    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_generated_command_lines_parse_with_the_real_cli(deployed: Path) -> None:
    """The files name flags of `secagg aggregator serve`, `agent run` and `health`: they must exist."""
    from secagg.cli import build_parser
    from secagg.provision.deploy import layout

    compose = yaml.safe_load((deployed / "deploy" / "compose" / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        _parses(svc["command"])
        if name != "aggregator":
            assert svc["command"][-1] == "--forever"
    unit = (deployed / "deploy" / "systemd" / "site-1" / "secagg-agent.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    _parses(exec_start.split()[1:])
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "health" not in choices:
        pytest.skip("`secagg health` is not in the CLI yet (the lead is adding it)")
    _parses(layout.health_command()[1:])
