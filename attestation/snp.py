"""AMD SEV-SNP attestation report and extended-report certificate table: parsing only.

Layout from AMD's SEV-SNP firmware ABI specification (ATTESTATION_REPORT structure, "Table 22" in
rev 1.55+), as implemented by go-sev-guest (``abi``) and virtee/sev. A report is exactly 1184 bytes;
versions 2, 3 and 5 are accepted (3 adds CPUID family/model/stepping, 5 adds mitigation vectors).
Parsing is strict: anything but exactly 1184 bytes is refused, and so are reserved fields that must
be zero, because a lenient parser is how two verifiers end up disagreeing about the same bytes.
"""

from __future__ import annotations

import binascii
import enum
import re
import struct
import uuid
from dataclasses import dataclass

from attestation.errors import ParseError

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # the ECDSA signature covers bytes [0, 0x2A0)
SIG_R = slice(0x2A0, 0x2A0 + 72)
SIG_S = slice(0x2E8, 0x2E8 + 72)
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

# Guest policy bits (ABI spec, GUEST_POLICY).
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20


class Product(enum.StrEnum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION. Turin moved the fields and added FMC, so decoding needs the product."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only

    @classmethod
    def decode(cls, raw: int, product: Product) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product is Product.TURIN:
            return cls(fmc=b[0], bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def as_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def signing_key(self) -> SigningKey | int:
        v = (self.flags >> 2) & 0x7
        try:
            return SigningKey(v)
        except ValueError:
            return v

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.flags & 0x2)

    def product_hint(self) -> Product | None:
        """Product from CPUID fields (v3+); None for v2, which does not carry them."""
        if self.cpuid_fam_id is None:
            return None
        if self.cpuid_fam_id == 0x1A:
            return Product.TURIN
        if self.cpuid_fam_id == 0x19:
            return Product.GENOA if (self.cpuid_mod_id or 0) >= 0x10 else Product.MILAN
        return None


def _u32(d: bytes, o: int) -> int:
    return int(struct.unpack_from("<I", d, o)[0])


def _u64(d: bytes, o: int) -> int:
    return int(struct.unpack_from("<Q", d, o)[0])


def _zero(d: bytes, start: int, end: int, what: str) -> None:
    if any(d[start:end]):
        raise ParseError(f"SEV-SNP report: reserved bytes {what} [0x{start:x}, 0x{end:x}) are not zero")


def parse_report(data: bytes) -> SnpReport:
    """Parse a raw 1184-byte report. Refuses any other length (no padding, no trailing bytes)."""
    if len(data) < REPORT_SIZE:
        raise ParseError(f"SEV-SNP report truncated: {len(data)} bytes, expected {REPORT_SIZE}")
    if len(data) > REPORT_SIZE:
        raise ParseError(
            f"SEV-SNP report has {len(data) - REPORT_SIZE} trailing bytes: {len(data)} bytes, "
            f"expected exactly {REPORT_SIZE}"
        )
    d = bytes(data)
    version = _u32(d, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise ParseError(f"SEV-SNP report version {version} not supported (accepted: 2, 3, 5)")
    sig_algo = _u32(d, 0x34)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise ParseError(f"SEV-SNP report signature algorithm {sig_algo} unknown (expected 1, ECDSA P-384)")
    _zero(d, 0x4C, 0x50, "after FLAGS")
    fam: int | None
    mod: int | None
    step: int | None
    launch_mit: int | None
    cur_mit: int | None
    if version >= 3:
        fam, mod, step = d[0x188], d[0x189], d[0x18A]
        _zero(d, 0x18B, 0x1A0, "after CPUID_STEP")
    else:
        fam = mod = step = None
        _zero(d, 0x188, 0x1A0, "after REPORTED_TCB")
    _zero(d, 0x1EB, 0x1EC, "after CURRENT_MAJOR")
    _zero(d, 0x1EF, 0x1F0, "after COMMITTED_MAJOR")
    if version >= 5:
        launch_mit, cur_mit = _u64(d, 0x1F8), _u64(d, 0x200)
        _zero(d, 0x208, 0x2A0, "after CURRENT_MIT_VECTOR")
    else:
        launch_mit = cur_mit = None
        _zero(d, 0x1F8, 0x2A0, "after LAUNCH_TCB")
    _zero(d, 0x330, REPORT_SIZE, "after the signature")
    return SnpReport(
        raw=d,
        version=version,
        guest_svn=_u32(d, 0x04),
        policy=_u64(d, 0x08),
        family_id=d[0x10:0x20],
        image_id=d[0x20:0x30],
        vmpl=_u32(d, 0x30),
        signature_algo=sig_algo,
        current_tcb=_u64(d, 0x38),
        platform_info=_u64(d, 0x40),
        flags=_u32(d, 0x48),
        report_data=d[0x50:0x90],
        measurement=d[0x90:0xC0],
        host_data=d[0xC0:0xE0],
        id_key_digest=d[0xE0:0x110],
        author_key_digest=d[0x110:0x140],
        report_id=d[0x140:0x160],
        report_id_ma=d[0x160:0x180],
        reported_tcb=_u64(d, 0x180),
        cpuid_fam_id=fam,
        cpuid_mod_id=mod,
        cpuid_step=step,
        chip_id=d[0x1A0:0x1E0],
        committed_tcb=_u64(d, 0x1E0),
        current_build=d[0x1E8],
        current_minor=d[0x1E9],
        current_major=d[0x1EA],
        committed_build=d[0x1EC],
        committed_minor=d[0x1ED],
        committed_major=d[0x1EE],
        launch_tcb=_u64(d, 0x1F0),
        launch_mit_vector=launch_mit,
        current_mit_vector=cur_mit,
        signature_r=int.from_bytes(d[SIG_R], "little"),
        signature_s=int.from_bytes(d[SIG_S], "little"),
    )


def split_extended_report(data: bytes) -> tuple[bytes, bytes | None]:
    """Split report || GUID certificate table (an *extended* report, as the host's extended guest
    request returns them together). A plain report gives ``(report, None)``. Bytes after the report
    that are not a well-formed certificate table are refused, so this is no back door for trailing
    garbage.
    """
    if len(data) <= REPORT_SIZE:
        return bytes(data), None
    table = bytes(data[REPORT_SIZE:])
    try:
        parse_cert_table(table)
    except ParseError as exc:
        raise ParseError(
            f"SEV-SNP report has {len(table)} trailing bytes that are not a certificate table ({exc})"
        ) from None
    return bytes(data[:REPORT_SIZE]), table


_HEX_RE = re.compile(rb"^[0-9a-fA-F]+$")


def decode_hex_report(text: bytes) -> bytes:
    """Hex text (as virtee/sev and snpguest print it) to raw bytes; only whitespace is tolerated."""
    compact = b"".join(text.split())
    if not _HEX_RE.match(compact) or len(compact) % 2:
        raise ParseError("SEV-SNP report hex text has non-hex characters or an odd length")
    try:
        return binascii.unhexlify(compact)
    except binascii.Error as exc:  # pragma: no cover - guarded by the regex
        raise ParseError(f"SEV-SNP report hex text: {exc}") from exc


# Extended report certificate table (GHCB spec, "SNP Extended Guest Request": GUID table).
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
_GUID_NAMES = {GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_ASK: "ask", GUID_ARK: "ark", GUID_CRL: "crl"}
_ENTRY = 24
MAX_CERT_TABLE = 1 << 20


def parse_cert_table(data: bytes) -> dict[str, bytes]:
    """Parse a GUID certificate table into ``{"vcek"|"vlek"|"ask"|"ark"|"crl"|<guid>: DER bytes}``.

    Entries are (GUID 16 bytes, offset u32, length u32), ending in an all-zero entry; offsets are from
    the table's start. The GUID is read in RFC 4122 byte order (go-sev-guest) and, failing that, in the
    little-endian order of the kernel's ``guid_t``, so tables from either producer are understood.
    Bytes after the last certificate are tolerated only if zero (hosts pad the table to whole pages).
    """
    if len(data) > MAX_CERT_TABLE:
        raise ParseError(f"SEV-SNP certificate table too large: {len(data)} bytes (max {MAX_CERT_TABLE})")
    out: dict[str, bytes] = {}
    pos = 0
    end_of_entries = None
    spans: list[tuple[int, int]] = []
    while True:
        if pos + _ENTRY > len(data):
            raise ParseError("SEV-SNP certificate table truncated: no terminating all-zero entry")
        entry = data[pos : pos + _ENTRY]
        pos += _ENTRY
        if not any(entry):
            end_of_entries = pos
            break
        g_be, g_le = uuid.UUID(bytes=entry[:16]), uuid.UUID(bytes_le=entry[:16])
        guid = g_be if g_be in _GUID_NAMES else g_le if g_le in _GUID_NAMES else g_be
        off, length = struct.unpack_from("<II", entry, 16)
        if length == 0 or off + length > len(data):
            raise ParseError(f"SEV-SNP certificate table entry {guid} points outside the table")
        name = _GUID_NAMES.get(guid, str(guid))
        if name in out:
            raise ParseError(f"SEV-SNP certificate table lists {name} twice")
        out[name] = data[off : off + length]
        spans.append((off, off + length))
    if not out:
        raise ParseError("SEV-SNP certificate table is empty")
    for a, _b in spans:
        if a < end_of_entries:
            raise ParseError("SEV-SNP certificate table entry overlaps the entry list")
    covered = bytearray(len(data))
    for a, b in spans:
        covered[a:b] = b"\x01" * (b - a)
    stray = [i for i in range(end_of_entries, len(data)) if not covered[i] and data[i]]
    if stray:
        raise ParseError(f"SEV-SNP certificate table has {len(stray)} non-zero bytes outside any certificate")
    return out
