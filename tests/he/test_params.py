from __future__ import annotations

import pytest

from secagg.errors import ConfigError
from secagg.he.context import make_secret_context
from secagg.he.params import (
    MAX_COEFF_MODULUS_BITS_128,
    NVFLARE_DEFAULT,
    PRESETS,
    SECAGG_DEFAULT,
    CkksParams,
    preset,
)


def test_presets_are_secure_and_named() -> None:
    for params in PRESETS.values():
        params.check_secure()
    assert PRESETS["secagg-default"] is SECAGG_DEFAULT
    assert PRESETS["nvflare-default"] is NVFLARE_DEFAULT
    assert CkksParams(8192, (60, 40, 40), 40, symmetric=False) == NVFLARE_DEFAULT
    assert SECAGG_DEFAULT.slots == SECAGG_DEFAULT.poly_modulus_degree // 2
    # ours carries fewer data-prime bits per slot than NVFlare's: that is where the bytes go
    assert SECAGG_DEFAULT.data_bits < NVFLARE_DEFAULT.data_bits
    with pytest.raises(ConfigError, match="unknown CKKS preset"):
        preset("nope")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (CkksParams(4096, (60, 50), 40, True), "below 128-bit security"),  # 110 > 109
        (CkksParams(2048, (40, 20), 30, True), "below 128-bit security"),  # 60 > 54
        (CkksParams(8192, (60, 60, 60, 60), 40, True), "below 128-bit security"),  # 240 > 218
        (CkksParams(3000, (40, 20), 30, True), "poly_modulus_degree"),
        (CkksParams(4096, (40,), 30, True), "at least two primes"),
        (CkksParams(4096, (61, 20), 40, True), "prime sizes"),
        (CkksParams(4096, (40, 20), 39, True), "headroom"),
        (CkksParams(4096, (40, 20), 10, True), "too small"),
    ],
)
def test_insecure_or_unusable_params_refused(params: CkksParams, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        params.check_secure()
    with pytest.raises(ConfigError, match=match):
        make_secret_context(params)


def test_table_edges_accepted() -> None:
    assert MAX_COEFF_MODULUS_BITS_128[2048] == 54 and MAX_COEFF_MODULUS_BITS_128[4096] == 109
    CkksParams(2048, (40, 14), 35, True).check_secure()  # exactly 54
    CkksParams(4096, (60, 49), 40, True).check_secure()  # exactly 109
    with pytest.raises(ConfigError):
        CkksParams(2048, (40, 15), 35, True).check_secure()  # 55


def test_from_dict_is_strict() -> None:
    assert CkksParams.from_dict(SECAGG_DEFAULT.to_dict()) == SECAGG_DEFAULT
    bad = dict(SECAGG_DEFAULT.to_dict(), extra=1)
    with pytest.raises(ConfigError, match="exactly the keys"):
        CkksParams.from_dict(bad)
    with pytest.raises(ConfigError, match="wrong type"):
        CkksParams.from_dict(dict(SECAGG_DEFAULT.to_dict(), scale_bits="36"))
    with pytest.raises(ConfigError, match="below 128-bit"):
        CkksParams.from_dict(dict(SECAGG_DEFAULT.to_dict(), coeff_mod_bit_sizes=[60, 60]))
