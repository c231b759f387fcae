"""What the aggregator's evidence binds, in its 64-byte report data.

    report_data = SHA-512( nonce                       32 bytes, fresh from the site
                        || SHA-256(announcement)       32 bytes, KeyAnnouncement.to_bytes() (RFC 8785)
                        || SHA-256(tls_cert_der) )     32 bytes, the aggregator's TLS leaf certificate

* the nonce makes the evidence fresh (no replay of old evidence);
* the announcement digest covers every HPKE public key the aggregator offers (one per suite, with the
  suite names) *and* the SPKI of its model-signing key, so a site encrypts only to keys generated
  inside the measured TEE and accepts only global models signed there;
* the certificate digest ties the evidence to this TLS channel: evidence relayed by a man in the
  middle presenting its own certificate does not match what the site sees.

All three inputs are fixed-length digests or a fixed-length nonce, so the concatenation is unambiguous.
"""

from __future__ import annotations

import hashlib

from secagg.tee.messages import KeyAnnouncement

NONCE_SIZE = 32


def check_nonce(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return bytes(nonce)


def report_data_from_digests(nonce: bytes, announcement_sha256: bytes, tls_cert_sha256: bytes) -> bytes:
    if len(announcement_sha256) != 32 or len(tls_cert_sha256) != 32:
        raise ValueError("digests must be 32 bytes (SHA-256)")
    return hashlib.sha512(check_nonce(nonce) + announcement_sha256 + tls_cert_sha256).digest()


def report_data(nonce: bytes, announcement: KeyAnnouncement, tls_cert_der: bytes) -> bytes:
    """The 64-byte report data the aggregator's evidence must carry (see the module docstring)."""
    return report_data_from_digests(nonce, announcement.digest(), hashlib.sha256(tls_cert_der).digest())
