from __future__ import annotations

import math

import pytest

from secagg.errors import ConfigError, PolicyRefusal
from secagg.mask.config import (
    MaskConfig,
    check_threshold,
    degree_range,
    graph_seed,
    neighbourhood,
    recommended_neighbours,
    recommended_threshold,
)


def test_config_rejects_bad_fields_and_names_each():
    with pytest.raises(ConfigError) as e:
        MaskConfig(threshold=1, neighbours=0, clip=-1.0, frac_bits=40)
    msg = str(e.value)
    for word in ("threshold", "neighbours", "clip", "frac_bits"):
        assert word in msg


def test_headroom_error_is_clear():
    cfg = MaskConfig(threshold=3, neighbours=4, clip=10.0, frac_bits=24)
    with pytest.raises(ConfigError, match=r"headroom.*lower frac_bits to at most (\d+)") as e:
        cfg.check_sites(16)
    fit = int(e.value.args[0].rsplit("at most ", 1)[1].split()[0])
    MaskConfig(threshold=3, neighbours=4, clip=10.0, frac_bits=fit).check_sites(16)


def test_threshold_must_be_majority_of_holders_and_reachable():
    with pytest.raises(ConfigError, match="strict majority"):
        MaskConfig(threshold=2, neighbours=4, clip=1.0, frac_bits=16).check_sites(10)
    with pytest.raises(ConfigError, match="never be recovered"):
        MaskConfig(threshold=6, neighbours=4, clip=1.0, frac_bits=16).check_sites(10)
    MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=16).check_sites(10)
    # k is capped at n - 1: with 3 sites there are 3 holders, so t = 2 is a majority
    MaskConfig(threshold=2, neighbours=10, clip=1.0, frac_bits=16).check_sites(3)


def test_check_threshold_policy_floor():
    cfg = MaskConfig(threshold=3, neighbours=4, clip=1.0, frac_bits=16)
    check_threshold(cfg, 3)
    with pytest.raises(PolicyRefusal) as e:
        check_threshold(cfg, 4)
    assert e.value.code == "mask_threshold"


@pytest.mark.parametrize(("n", "k"), [(10, 4), (11, 4), (10, 3), (11, 3), (12, 5), (5, 4), (5, 10)])
def test_neighbourhood_is_symmetric_deterministic_with_stated_degrees(n, k):
    sites = [f"site-{i}" for i in range(n)]
    g = neighbourhood(sites, k, graph_seed("job", 1))
    assert g == neighbourhood(list(reversed(sites)), k, graph_seed("job", 1))
    for s, nbrs in g.items():
        assert s not in nbrs
        for t in nbrs:
            assert s in g[t]
    lo, hi = degree_range(n, k)
    degrees = sorted(len(v) for v in g.values())
    assert degrees[0] == lo and degrees[-1] == hi
    if k < n - 1:
        assert g != neighbourhood(sites, k, graph_seed("job", 2))  # a fresh graph each round


def test_neighbourhood_size_grows_like_log_n():
    sizes = {}
    for n in (16, 64, 256, 1024):
        k = recommended_neighbours(n)
        g = neighbourhood([f"s{i}" for i in range(n)], k, graph_seed("job", 1))
        sizes[n] = max(len(v) for v in g.values())
        assert sizes[n] <= 3 * math.ceil(math.log2(n)) + 1
        cfg = MaskConfig(threshold=recommended_threshold(sizes[n]), neighbours=k, clip=1.0, frac_bits=8)
        cfg.check_sites(n)
    # 64x more sites, at most 2.5x larger neighbourhoods
    assert sizes[1024] <= 2.5 * sizes[16]
    assert sizes[1024] < 1024 // 20


@pytest.mark.parametrize("n", [2, 3, 8, 15, 100])
def test_recommended_config_is_valid_and_tolerates_dropouts(n):
    cfg = MaskConfig.recommended(n, clip=1.0, frac_bits=8)
    lo, _ = degree_range(n, cfg.effective_neighbours(n))
    assert cfg.threshold <= lo + 1
    if n >= 8:
        assert cfg.threshold < lo  # at least one neighbour of every site may drop
