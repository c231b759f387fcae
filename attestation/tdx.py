"""Intel TDX DCAP quote (versions 4 and 5): parsing only.

Layout from Intel's "TDX DCAP Quote Generation Library and Quote Verification Library" data
structures, as go-tdx-guest and dcap-qvl read them:

    header (48) | [v5: body type u16, body size u32] | TD report body (584; v5 type 3: 648)
    | signature data length u32 | signature data

signature data = quote signature (64, r||s big-endian) | attestation key (64, raw P-256 x||y)
| certification data (type u16 = 6, size u32) = QE report (384) | QE report signature (64)
| QE auth data (size u16, data) | certification data (type u16 = 5, size u32, PEM PCK chain).

What is accepted after the declared signature data: zero bytes only (quote buffers from the guest
driver are fixed-size and zero-filled, e.g. GCP's 8000-byte quotes); anything else is refused as
trailing garbage unless the caller passes ``allow_trailing_garbage=True`` (the bytes are not signed,
so ignoring them is safe, but a strict default keeps smuggled payloads out of logs and storage).
Inside the PCK PEM blob one trailing NUL is accepted (C producers terminate the string).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation.errors import ParseError

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
MAX_QUOTE_SIZE = 64 * 1024
TD_ATTR_DEBUG = 1  # TDATTRIBUTES bit 0: TUD.DEBUG
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


@dataclass(frozen=True)
class TdReport:
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None  # TDX 1.5 body (v5, type 3)
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class QeReport:
    """The Quoting Enclave's SGX report body (384 bytes)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class TdxQuote:
    raw: bytes
    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int
    body: TdReport
    signed_bytes: bytes  # header + body: what the attestation key signs
    signature: bytes  # r||s, 64 bytes big-endian
    attestation_key: bytes  # raw x||y, 64 bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: bytes  # after the declared signature data (zeros unless allowed otherwise)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.d, self.p, self.what = data, 0, what

    def take(self, n: int, field: str) -> bytes:
        if self.p + n > len(self.d):
            raise ParseError(f"{self.what} truncated reading {field}: needs {n} bytes at offset {self.p}")
        out = self.d[self.p : self.p + n]
        self.p += n
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])


def _td_report(b: bytes) -> TdReport:
    r = _Reader(b, "TD report body")
    tee_tcb_svn = r.take(16, "TEE_TCB_SVN")
    mr_seam, mr_signer_seam = r.take(48, "MRSEAM"), r.take(48, "MRSIGNERSEAM")
    seam_attr, td_attr, xfam = r.take(8, "SEAMATTRIBUTES"), r.take(8, "TDATTRIBUTES"), r.take(8, "XFAM")
    mr_td, cfg, owner, owner_cfg = (r.take(48, n) for n in ("MRTD", "MRCONFIGID", "MROWNER", "MROWNERCONFIG"))
    rtmrs = (r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3"))
    report_data = r.take(64, "REPORTDATA")
    svn2 = r.take(16, "TEE_TCB_SVN2") if len(b) == TD15_BODY_SIZE else None
    svc = r.take(48, "MRSERVICETD") if len(b) == TD15_BODY_SIZE else None
    return TdReport(
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attr,
        td_attr,
        xfam,
        mr_td,
        cfg,
        owner,
        owner_cfg,
        rtmrs,
        report_data,
        svn2,
        svc,
    )


def _qe_report(b: bytes) -> QeReport:
    return QeReport(
        raw=b,
        cpu_svn=b[0:16],
        misc_select=int.from_bytes(b[16:20], "little"),
        attributes=b[48:64],
        mr_enclave=b[64:96],
        mr_signer=b[128:160],
        isv_prod_id=int.from_bytes(b[256:258], "little"),
        isv_svn=int.from_bytes(b[258:260], "little"),
        report_data=b[320:384],
    )


def parse_quote(data: bytes, *, allow_trailing_garbage: bool = False) -> TdxQuote:
    d = bytes(data)
    if len(d) > MAX_QUOTE_SIZE:
        raise ParseError(f"TDX quote too large: {len(d)} bytes (max {MAX_QUOTE_SIZE})")
    r = _Reader(d, "TDX quote")
    header = r.take(HEADER_SIZE, "header")
    version, akt, tee_type = struct.unpack_from("<HHI", header, 0)
    if version not in (4, 5):
        raise ParseError(f"TDX quote version {version} not supported (accepted: 4, 5)")
    if akt != ATT_KEY_ECDSA_P256:
        raise ParseError(f"TDX quote attestation key type {akt} not supported (expected 2, ECDSA P-256)")
    if tee_type != TEE_TYPE_TDX:
        raise ParseError(f"quote TEE type 0x{tee_type:x} is not TDX (0x81)")
    if version == 4:
        body_type, body_size = 2, TD10_BODY_SIZE
    else:
        body_type, body_size = r.u16("body type"), r.u32("body size")
        expected = {2: TD10_BODY_SIZE, 3: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise ParseError(f"TDX quote v5 body type {body_type} not supported (2: TDX 1.0, 3: TDX 1.5)")
        if body_size != expected:
            raise ParseError(
                f"TDX quote v5 body size {body_size} does not match type {body_type} ({expected})"
            )
    body = _td_report(r.take(body_size, "TD report body"))
    signed = d[: r.p]
    sig_len = r.u32("signature data length")
    sig_data = r.take(sig_len, "signature data")
    trailing = d[r.p :]
    if any(trailing) and not allow_trailing_garbage:
        raise ParseError(
            f"TDX quote has {len(trailing)} trailing bytes after the signature data that are not zero"
        )

    s = _Reader(sig_data, "TDX quote signature data")
    signature, att_key = s.take(64, "quote signature"), s.take(64, "attestation key")
    ctype, csize = s.u16("certification data type"), s.u32("certification data size")
    if ctype != CERT_TYPE_QE_REPORT:
        raise ParseError(f"TDX quote certification data type {ctype} not supported (expected 6: QE report)")
    cert = s.take(csize, "certification data")
    if s.p != len(sig_data):
        raise ParseError(
            f"TDX quote signature data has {len(sig_data) - s.p} bytes after the certification data"
        )
    c = _Reader(cert, "TDX QE report certification data")
    qe = _qe_report(c.take(QE_REPORT_SIZE, "QE report"))
    qe_sig = c.take(64, "QE report signature")
    auth = c.take(c.u16("QE auth data size"), "QE auth data")
    itype, isize = c.u16("PCK certification data type"), c.u32("PCK certification data size")
    if itype != CERT_TYPE_PCK_CHAIN:
        raise ParseError(f"TDX QE certification data type {itype} not supported (expected 5: PCK chain)")
    pem = c.take(isize, "PCK certificate chain")
    if c.p != len(cert):
        raise ParseError(f"TDX QE report certification data has {len(cert) - c.p} trailing bytes")
    if pem.endswith(b"\x00"):
        pem = pem[:-1]
    if b"\x00" in pem:
        raise ParseError("TDX PCK certificate chain contains NUL bytes")
    return TdxQuote(
        raw=d,
        version=version,
        att_key_type=akt,
        tee_type=tee_type,
        qe_vendor_id=header[12:28],
        user_data=header[28:48],
        body_type=body_type,
        body=body,
        signed_bytes=signed,
        signature=signature,
        attestation_key=att_key,
        qe_report=qe,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=pem,
        trailing=trailing,
    )
