"""The reason registry: every code once, with a gRPC status and an exit code; the service and the
admin console answer through it, with the code in the trailing metadata as well as the text."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import grpc
import pytest

import secagg
from secagg import errors, reasons
from secagg.aggregator import admin, rpc
from secagg.reasons import METADATA_KEY, Reason

ROOT = Path(secagg.__file__).parent


def test_every_code_has_a_status_an_exit_code_and_a_summary() -> None:
    codes = [r.value for r in Reason]
    assert len(codes) == len(set(codes))
    for r in Reason:
        assert isinstance(grpc.StatusCode[r.status], grpc.StatusCode), r
        assert r.exit_code in (0, 1, 2) and r.summary
    assert Reason.USAGE.exit_code == 2 and Reason.OK.exit_code == 0
    assert {r for r in Reason if r.exit_code != 1} == {Reason.USAGE, Reason.OK}


def test_the_two_former_tables_are_this_one() -> None:
    """What service.py and admin.py used to map by hand, now read from the registry."""
    expect = {
        "INVALID_ARGUMENT": [
            "malformed",
            "bad_shape",
            "non_finite",
            "corrupt",
            "truncated",
            "oversize",
            "usage",
        ],
        "ALREADY_EXISTS": ["duplicate", "duplicate_upload"],
        "PERMISSION_DENIED": ["forbidden", "not_admin"],
        "UNAUTHENTICATED": ["identity"],
        "NOT_FOUND": ["no_such_job"],
        "FAILED_PRECONDITION": ["late", "wrong_round", "not_in_roster", "bad_weight", "signer_role"],
    }
    for status, codes in expect.items():
        for code in codes:
            assert reasons.grpc_status(code) == grpc.StatusCode[status], code
    assert reasons.grpc_status("a-code-nobody-registered") == grpc.StatusCode.FAILED_PRECONDITION
    assert reasons.lookup("shape") is None  # one code for a refused shape: bad_shape


def test_error_classes_codes_are_registered_with_their_exit_codes() -> None:
    classes = [errors.SecaggError, *errors.SecaggError.__subclasses__()]
    for cls in classes:
        reason = reasons.lookup(cls.code)
        assert reason is not None, cls
        assert reason.exit_code == cls.exit_code, cls


def _literal_codes(path: Path) -> set[str]:
    """String literals passed as ``code=`` or set as a class's ``code`` in a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.keyword)
            and node.arg == "code"
            and isinstance(node.value, ast.Constant)
            or (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["code"]
                and isinstance(node.value, ast.Constant)
            )
        ):
            found.add(str(node.value.value))
    return found


def test_no_code_a_refusal_carries_is_missing_from_the_registry() -> None:
    missing = {}
    for path in ROOT.rglob("*.py"):
        unknown = {c for c in _literal_codes(path) if reasons.lookup(c) is None}
        if unknown:
            missing[str(path.relative_to(ROOT))] = sorted(unknown)
    assert not missing, f"add these codes to secagg/reasons.py: {missing}"


def test_no_code_is_named_inline_anywhere() -> None:
    """Every refusal names its code through the registry (``Reason.X``), so a renamed or retired code
    is one edit and a typo fails at import, not in an operator's dashboard."""
    inline = {}
    for path in ROOT.rglob("*.py"):
        if path.name == "reasons.py":
            continue
        found = _literal_codes(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # annotated class attributes and parameter defaults too
            if (
                isinstance(node, ast.AnnAssign)
                and getattr(node.target, "id", None) == "code"
                and isinstance(node.value, ast.Constant)
            ):
                found.add(str(node.value.value))
            if isinstance(node, ast.arguments):
                names = [a.arg for a in node.args + node.kwonlyargs]
                defaults = [None] * (len(node.args) - len(node.defaults)) + list(node.defaults)
                defaults += list(node.kw_defaults)
                for name, default in zip(names, defaults, strict=True):
                    if name == "code" and isinstance(default, ast.Constant) and default.value is not None:
                        found.add(str(default.value))
        if found:
            inline[str(path.relative_to(ROOT))] = sorted(found)
    assert not inline, f"name these codes as Reason members: {inline}"


def test_no_code_travels_as_a_bare_literal() -> None:
    """Codes passed positionally, listed, mapped or compared (``Reason("rule", False, "x", ...)``,
    ``AttestationRefused(["tee_x"], ...)``) come from the registry too; dict keys are other vocabularies
    (validation fields) and stay literal."""
    codes = {r.value for r in Reason if "_" in r.value}  # one-word codes are also ordinary words
    bare = []
    for path in ROOT.rglob("*.py"):
        if path.name == "reasons.py" or "generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            parts: list[ast.expr] = []
            if isinstance(node, ast.Call):
                parts = [*node.args, *(k.value for k in node.keywords)]
            elif isinstance(node, ast.List | ast.Tuple | ast.Set):
                parts = list(node.elts)
            elif isinstance(node, ast.Dict):
                parts = [v for v in node.values if v is not None]
            elif isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
            elif isinstance(node, ast.Return) and node.value is not None:
                parts = [node.value]
            bare += [
                f"{path.relative_to(ROOT)}:{p.lineno} {p.value}"
                for p in parts
                if isinstance(p, ast.Constant) and p.value in codes
            ]
    assert not bare, bare


class _Context:
    """Records what a handler ends a call with."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.status: grpc.StatusCode | None = None
        self.details = ""

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailing = md

    def abort(self, status: grpc.StatusCode, details: str) -> None:
        self.status, self.details = status, details
        raise RuntimeError("aborted")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("duplicate_upload", "ALREADY_EXISTS"),
        ("late", "FAILED_PRECONDITION"),
        ("forbidden", "PERMISSION_DENIED"),
    ],
)
def test_a_refused_call_carries_its_code_in_trailing_metadata_and_text(code: str, status: str) -> None:
    ctx = _Context()
    with pytest.raises(RuntimeError):
        rpc.abort(ctx, code, "what happened")  # type: ignore[arg-type]
    assert ctx.status == grpc.StatusCode[status]
    assert ctx.details == f"{code}: what happened"  # the text older agents parse, unchanged
    assert ctx.trailing == ((METADATA_KEY, code),)
    assert reasons.from_metadata(ctx.trailing) == code


def test_service_and_admin_end_refusals_through_the_registry() -> None:
    from secagg.aggregator import service

    assert "abort(context, exc.code" in inspect.getsource(service.FederationService._refuse)
    assert "abort(context, exc.code" in inspect.getsource(admin.AdminConsole._fail)
    assert not hasattr(admin, "_status_for")


def test_reading_the_code_back_from_an_rpc_error() -> None:
    class _Err:
        def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
            return ((("other", b"x")), (METADATA_KEY, b"not_in_roster"))

    assert reasons.of_rpc_error(_Err()) == "not_in_roster"
    assert reasons.of_rpc_error(RuntimeError("no metadata")) is None
    assert {str(c) for c in reasons.STALE} == {"late", "wrong_round", "not_in_roster"}
    assert json.dumps({"code": Reason.LATE}) == '{"code": "late"}'
