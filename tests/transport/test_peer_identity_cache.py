"""The aggregator keeps the signature check of a caller's certificate (by its exact bytes and the CA)
and still checks the validity period on every call; a refusal is never kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from secagg.errors import IdentityError
from secagg.provision import identity
from secagg.provision.ca import issue_cert, make_ca
from secagg.transport import tls


class _Ctx:
    def __init__(self, pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [pem]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


class _Kit:
    def __init__(self, ca_cert: Any) -> None:
        self.ca_cert = ca_cert


@pytest.fixture
def project() -> Any:
    tls._issued.cache_clear()
    ca_key, ca_cert = make_ca("cache", days=30)
    return ca_key, ca_cert


def _pem(cert: Any) -> bytes:
    return bytes(cert.public_bytes(Encoding.PEM))


def test_the_same_certificate_is_verified_once(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_key, ca_cert = project
    _, cert = issue_cert(ca_key, ca_cert, name="site-1", org="o", role="site", days=5)
    calls: list[str] = []
    real = identity.verify_issued

    def counted(c: Any, ca: Any) -> Any:
        calls.append(c.subject.rfc4514_string())
        return real(c, ca)

    monkeypatch.setattr(tls, "verify_issued", counted)
    for _ in range(5):
        assert tls.peer_identity(_Ctx(_pem(cert)), _Kit(ca_cert)).name == "site-1"  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_kept_certificate_that_expires_is_refused_at_the_next_call(
    project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_key, ca_cert = project
    _, cert = issue_cert(ca_key, ca_cert, name="site-1", org="o", role="site", days=1)
    assert tls.peer_identity(_Ctx(_pem(cert)), _Kit(ca_cert)).name == "site-1"  # type: ignore[arg-type]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)

    class _Later(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return later

    monkeypatch.setattr(tls.dt, "datetime", _Later)
    with pytest.raises(IdentityError, match="expired"):
        tls.peer_identity(_Ctx(_pem(cert)), _Kit(ca_cert))  # type: ignore[arg-type]


def test_a_refusal_is_not_kept(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ca_cert = project
    other_key, other_ca = make_ca("other", days=30)
    _, stranger = issue_cert(other_key, other_ca, name="site-1", org="o", role="site", days=5)
    calls: list[int] = []
    real = identity.verify_issued

    def counted(c: Any, ca: Any) -> Any:
        calls.append(1)
        return real(c, ca)

    monkeypatch.setattr(tls, "verify_issued", counted)
    for _ in range(3):
        with pytest.raises(IdentityError, match="not issued by this project's CA"):
            tls.peer_identity(_Ctx(_pem(stranger)), _Kit(ca_cert))  # type: ignore[arg-type]
    assert len(calls) == 3


def test_a_certificate_under_another_ca_is_verified_under_that_ca(project: Any) -> None:
    ca_key, ca_cert = project
    _, cert = issue_cert(ca_key, ca_cert, name="site-1", org="o", role="site", days=5)
    assert tls.peer_identity(_Ctx(_pem(cert)), _Kit(ca_cert)).name == "site-1"  # type: ignore[arg-type]
    _, other_ca = make_ca("cache", days=30)  # same name, another key: the kept result must not apply
    with pytest.raises(IdentityError, match="signature does not verify"):
        tls.peer_identity(_Ctx(_pem(cert)), _Kit(other_ca))  # type: ignore[arg-type]
