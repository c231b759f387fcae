"""CKKS (TenSEAL) secure aggregation: parameters, contexts, the flat ciphertext stream, key custody.

Pure library: no gRPC, CLI or agent imports. The aggregator uses :class:`PublicContext` and
:class:`CiphertextAccumulator` only; sites use :class:`SecretContext`, ``encrypt_vector`` (or
``encrypt_windows``) and ``decrypt_vector``; the key-holder site makes the key and its :class:`KeyRelease`.
"""

from secagg.he.codec import (
    CiphertextAccumulator,
    StreamRejected,
    decrypt_vector,
    decrypt_windows,
    encrypt_vector,
    encrypt_windows,
    n_ciphertexts,
    sum_streams,
)
from secagg.he.context import (
    PublicContext,
    SecretContext,
    load_public_context,
    load_secret_context,
    make_secret_context,
)
from secagg.he.custody import KeyRelease, make_key_envelopes, open_envelope, verify_public_context
from secagg.he.params import NVFLARE_DEFAULT, PRESETS, SECAGG_DEFAULT, CkksParams
from secagg.he.store import load_secret_context_file, save_secret_context

__all__ = [
    "NVFLARE_DEFAULT",
    "PRESETS",
    "SECAGG_DEFAULT",
    "CiphertextAccumulator",
    "CkksParams",
    "KeyRelease",
    "PublicContext",
    "SecretContext",
    "StreamRejected",
    "decrypt_vector",
    "decrypt_windows",
    "encrypt_vector",
    "encrypt_windows",
    "load_public_context",
    "load_secret_context",
    "load_secret_context_file",
    "make_key_envelopes",
    "make_secret_context",
    "n_ciphertexts",
    "open_envelope",
    "save_secret_context",
    "sum_streams",
    "verify_public_context",
]
