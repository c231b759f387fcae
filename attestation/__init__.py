"""Attestation evidence formats and verifiers (AMD SEV-SNP, Intel TDX, dev-only software TEE).

This package knows nothing of gRPC, the CLI or the agent: it takes bytes and options, and returns
parsed, verified and validated results or raises specific errors.
"""
