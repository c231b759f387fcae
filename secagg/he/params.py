"""CKKS parameter sets, and the check that refuses any set below 128-bit classical security.

Why our default is small: the aggregator only ever *adds* fresh ciphertexts (sites apply their weight
in plaintext before encrypting), so no multiplication, rescale or relinearisation ever happens. A fresh
ciphertext carries only the data-level prime(s) -- every prime but the last, which TenSEAL reserves as
the key-switching "special" prime -- so its size is set by ``coeff_mod_bit_sizes[:-1]`` alone. One
40-bit data prime fits the serialised coefficients in 5 bytes each; ``scale_bits`` trades precision
(error ~ 2**-scale_bits * sqrt(N)) against headroom (largest encodable |value| ~ q / 2**(scale_bits+1)).
Measured: N=4096, [40, 20], 2**36 gives max abs error ~4e-8 over 16 sites at ~1.5x the raw float32
bytes (NVFlare's default: ~14.4x), with two values per complex slot and seeded uploads
(:mod:`secagg.he.codec`).

Symmetric encryption: every encrypting site holds the secret key anyway, and a symmetric context has
no public key at all, so the aggregator's context cannot encrypt and fresh ciphertexts carry less noise
(no ``u*e`` term from the public key), which lets us use a smaller scale. It also makes SEAL's seeded
ciphertexts possible: the uniform half of a fresh ciphertext travels as the seed that generates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secagg.errors import ConfigError

#: HomomorphicEncryption.org standard (2018), table for 128-bit classical security, ternary secret:
#: largest total coefficient-modulus bit count per ring dimension.
MAX_COEFF_MODULUS_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: SEAL accepts primes of at most 60 bits; smaller than this cannot be 1 mod 2N for our N range.
_MIN_PRIME_BITS = 14
_MAX_PRIME_BITS = 60
#: below this a fresh ciphertext's error exceeds what federated averaging tolerates
_MIN_SCALE_BITS = 20


@dataclass(frozen=True)
class CkksParams:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    symmetric: bool

    @property
    def slots(self) -> int:
        """CKKS slots per ciphertext: N/2 complex numbers."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values per ciphertext: two per complex slot (real and imaginary part), N in all.

        TenSEAL's vectors leave the imaginary parts empty; filling them halves the ciphertexts, and so
        the bytes and the time, of every step. Addition acts on both parts independently.
        """
        return 2 * self.slots

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def data_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext carries (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def max_abs_value(self) -> float:
        """Largest |value| a site may encrypt so that the weighted sum cannot wrap modulo q.

        A slot holds two values, so its modulus is up to sqrt(2) times the largest of them; a plaintext
        coefficient is at most the largest slot modulus times the scale: sqrt(2) * 2**(data_bits - 2),
        under the q/2 > 2**(data_bits - 2) at which it would wrap. The weights sum to 1, so the
        aggregate is no larger than the largest site value.
        """
        return float(2.0 ** (self.data_bits - self.scale_bits - 2))

    def check_secure(self) -> None:
        """Raise :class:`ConfigError` unless the set is 128-bit secure and usable for aggregation."""
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_MODULUS_BITS_128:
            raise ConfigError(
                f"CKKS poly_modulus_degree {n} is not one of {sorted(MAX_COEFF_MODULUS_BITS_128)}"
            )
        sizes = self.coeff_mod_bit_sizes
        if len(sizes) < 2:
            raise ConfigError(
                "CKKS coeff_mod_bit_sizes needs at least two primes (data prime(s) and TenSEAL's special "
                f"key-switching prime), got {list(sizes)}"
            )
        bad = [b for b in sizes if not _MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS]
        if bad:
            raise ConfigError(
                f"CKKS prime sizes must be {_MIN_PRIME_BITS}..{_MAX_PRIME_BITS} bits, got {list(sizes)}"
            )
        limit = MAX_COEFF_MODULUS_BITS_128[n]
        if self.total_bits > limit:
            raise ConfigError(
                f"CKKS parameters are below 128-bit security: N={n} allows at most {limit} coefficient "
                f"modulus bits, got {self.total_bits} ({list(sizes)})"
            )
        if self.scale_bits < _MIN_SCALE_BITS:
            raise ConfigError(f"CKKS scale 2**{self.scale_bits} is too small for useful precision")
        if self.data_bits - self.scale_bits < 3:
            raise ConfigError(
                f"CKKS scale 2**{self.scale_bits} leaves no headroom in a {self.data_bits}-bit data modulus"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CkksParams:
        """Parse untrusted input strictly (types and keys), then check security."""
        expected = {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits", "symmetric"}
        if not isinstance(data, dict) or set(data) != expected:
            raise ConfigError(f"CKKS parameters must be an object with exactly the keys {sorted(expected)}")
        n = data["poly_modulus_degree"]
        sizes = data["coeff_mod_bit_sizes"]
        scale = data["scale_bits"]
        sym = data["symmetric"]
        ints_ok = _is_int(n) and _is_int(scale) and isinstance(sizes, list) and all(_is_int(b) for b in sizes)
        if not ints_ok or not isinstance(sym, bool):
            raise ConfigError("CKKS parameters have fields of the wrong type")
        params = cls(n, tuple(sizes), scale, sym)
        params.check_secure()
        return params

    def describe(self) -> str:
        mode = "symmetric" if self.symmetric else "public-key"
        sizes = list(self.coeff_mod_bit_sizes)
        return f"CKKS N={self.poly_modulus_degree} q={sizes} 2**{self.scale_bits} {mode}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: ours: smallest measured set meeting max abs error <= 1e-7 for 16 sites; |value| <= 4 per site
SECAGG_DEFAULT = CkksParams(4096, (40, 20), 36, symmetric=True)
#: more headroom (|value| <= 256) for updates that are not small deltas, at ~6.8x raw instead of ~6.0x
SECAGG_WIDE = CkksParams(4096, (46, 20), 36, symmetric=True)
#: NVFlare's HE default, kept for comparison benchmarks
NVFLARE_DEFAULT = CkksParams(8192, (60, 40, 40), 40, symmetric=False)

PRESETS: dict[str, CkksParams] = {
    "secagg-default": SECAGG_DEFAULT,
    "secagg-wide": SECAGG_WIDE,
    "nvflare-default": NVFLARE_DEFAULT,
}


def preset(name: str) -> CkksParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown CKKS preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
