from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secagg.aggregator.modes import BadUpload
from secagg.aggregator.modes import he as combine
from secagg.aggregator.modes.he import HECombiner
from secagg.bundle import BundleSpec
from secagg.framing import frame, unframe
from secagg.he.codec import decrypt_vector, encrypt_vector
from secagg.he.context import SecretContext, make_secret_context
from secagg.he.params import SECAGG_DEFAULT


@pytest.fixture(scope="module")
def secret_ctx() -> SecretContext:
    return make_secret_context(SECAGG_DEFAULT)


@pytest.fixture
def spec() -> BundleSpec:
    return BundleSpec.of({"w": np.zeros((3, 2000), np.float32), "b": np.zeros(7, np.float32)})


def _spool(path: Path, frames: list[bytes]) -> Path:
    path.write_bytes(b"".join(frame(frames)))
    return path


def _uploads(tmp_path: Path, secret: SecretContext, xs: np.ndarray, w: np.ndarray) -> list[Path]:
    return [
        _spool(tmp_path / f"site-{i}.upload", list(encrypt_vector(secret, x, float(wi))))
        for i, (x, wi) in enumerate(zip(xs, w, strict=True))
    ]


def _result(secret: SecretContext, out: Path, n: int) -> np.ndarray:
    with out.open("rb") as fh:
        return decrypt_vector(secret, unframe(fh), n)


@pytest.mark.parametrize("group", [256, 2])
def test_he_combine_sums_uploads_in_one_pass_or_in_groups(
    tmp_path: Path, spec: BundleSpec, secret_ctx: SecretContext, monkeypatch: pytest.MonkeyPatch, group: int
) -> None:
    monkeypatch.setattr(combine, "MAX_OPEN_UPLOADS", group)
    rng = np.random.default_rng(1)
    xs = rng.uniform(-0.05, 0.05, (5, spec.size))
    w = rng.dirichlet(np.ones(5))
    uploads = _uploads(tmp_path, secret_ctx, xs, w)
    comb = HECombiner(spec, secret_ctx.serialize_public())
    out = tmp_path / "result.he"
    comb.combine(uploads, out)
    assert np.max(np.abs(_result(secret_ctx, out, spec.size) - w @ xs)) <= 1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(p.name for p in uploads), "result.he"])


@pytest.mark.parametrize("group", [256, 2])
def test_he_combine_blames_the_bad_upload_and_leaves_no_result(
    tmp_path: Path, spec: BundleSpec, secret_ctx: SecretContext, monkeypatch: pytest.MonkeyPatch, group: int
) -> None:
    monkeypatch.setattr(combine, "MAX_OPEN_UPLOADS", group)
    xs = np.full((4, spec.size), 0.01)
    uploads = _uploads(tmp_path, secret_ctx, xs, np.full(4, 0.25))
    with uploads[3].open("rb") as fh:
        frames = list(unframe(fh))
    _spool(uploads[3], [frames[0], frames[0]])  # index 1 carries index 0's ciphertext
    comb = HECombiner(spec, secret_ctx.serialize_public())
    out = tmp_path / "result.he"
    with pytest.raises(BadUpload) as err:
        comb.combine(uploads, out)
    assert err.value.path == uploads[3]
    assert not out.exists()
    assert sorted(tmp_path.iterdir()) == sorted(uploads)  # no partial sums left behind
