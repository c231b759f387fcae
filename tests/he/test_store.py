from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import ConfigError, IntegrityError
from secagg.he.codec import decrypt_vector, encrypt_vector
from secagg.he.context import SecretContext
from secagg.he.store import load_secret_context_file, save_secret_context


def test_save_is_private_and_loads_back(tmp_path: Path, secret_ctx: SecretContext) -> None:
    path = save_secret_context(tmp_path / "he" / "secret.ctx", secret_ctx)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.ctx"]  # no temp file left behind
    loaded = load_secret_context_file(path)
    assert loaded.key_commitment == secret_ctx.key_commitment
    x = np.full(7, 0.03)
    assert np.max(np.abs(decrypt_vector(loaded, encrypt_vector(secret_ctx, x, 1.0), 7) - x)) <= 1e-7


def test_overwrite_replaces_atomically(
    tmp_path: Path, secret_ctx: SecretContext, other_secret_ctx: SecretContext
) -> None:
    path = tmp_path / "secret.ctx"
    save_secret_context(path, secret_ctx)
    inode = path.stat().st_ino
    save_secret_context(path, other_secret_ctx)
    assert path.stat().st_ino != inode  # a new file renamed over, never rewritten in place
    assert load_secret_context_file(path).key_commitment == other_secret_ctx.key_commitment


def test_load_refusals(tmp_path: Path, secret_ctx: SecretContext) -> None:
    path = save_secret_context(tmp_path / "secret.ctx", secret_ctx)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret_context_file(path)
    os.chmod(path, 0o600)
    link = tmp_path / "link.ctx"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="symlink"):
        load_secret_context_file(link)
    with pytest.raises(ConfigError, match="no HE secret key"):
        load_secret_context_file(tmp_path / "missing.ctx")
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_secret_context_file(path)
