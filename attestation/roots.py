"""Pinned trust anchors, shipped inside the package.

The PEM files are data, but data can be swapped on disk; so each root is also pinned here by the
SHA-256 of its DER encoding (the values AMD and Intel publish), and a file that does not match is
refused rather than trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.snp import Product

AMD_ARK_SHA256 = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
INTEL_SGX_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

_AMD_FILES = {
    (Product.MILAN, "vcek"): "ask_ark_milan.pem",
    (Product.MILAN, "vlek"): "ask_ark_milan_vlek.pem",
    (Product.GENOA, "vcek"): "ask_ark_genoa.pem",
    (Product.GENOA, "vlek"): "ask_ark_genoa_vlek.pem",
    (Product.TURIN, "vcek"): "ask_ark_turin_vcek.pem",
    (Product.TURIN, "vlek"): "ask_ark_turin_vlek.pem",
}


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class AmdChain:
    product: Product
    kind: str  # "vcek" (ASK intermediate) or "vlek" (ASVK intermediate)
    intermediate: x509.Certificate
    ark: x509.Certificate


def _read(package: str, name: str) -> bytes:
    return resources.files(package).joinpath(name).read_bytes()


@lru_cache(maxsize=1)
def amd_chains() -> tuple[AmdChain, ...]:
    """AMD's KDS chains (ASK/ASVK then ARK) for Milan, Genoa and Turin, ARKs checked against the pins."""
    out = []
    for (product, kind), name in _AMD_FILES.items():
        certs = x509.load_pem_x509_certificates(_read("attestation.data.amd", name))
        if len(certs) != 2:
            raise RuntimeError(f"pinned AMD chain {name} must hold ASK/ASVK then ARK")
        inter, ark = certs
        if fingerprint(ark) != AMD_ARK_SHA256[product]:
            raise RuntimeError(
                f"pinned AMD chain {name}: ARK does not match the pinned {product} fingerprint"
            )
        out.append(AmdChain(product, kind, inter, ark))
    return tuple(out)


def amd_ark_product(cert: x509.Certificate) -> Product | None:
    """Which product line an ARK is the pinned root of, or None if it is not a pinned root."""
    fp = fingerprint(cert)
    for product, pinned in AMD_ARK_SHA256.items():
        if fp == pinned:
            return product
    return None


@lru_cache(maxsize=1)
def intel_sgx_root() -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(_read("attestation.data.intel", "Intel_SGX_Root_CA.pem"))
    if fingerprint(cert) != INTEL_SGX_ROOT_SHA256:
        raise RuntimeError("pinned Intel SGX Root CA does not match its fingerprint")
    return cert
