"""Specs, the chain built from them, the stronger-or-equal order, and NVFlare translation."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError
from secagg.privacy import (
    ExcludeSpec,
    GaussianSpec,
    PercentileSpec,
    SvtSpec,
    apply_chain,
    build_chain,
    chain_shortfalls,
    from_nvflare,
    parse_specs,
    spend_of,
    stronger_or_equal,
    svt_epsilon,
    worst_case_spends,
)


def _upd() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder.w": rng.normal(size=(50, 20)).astype(np.float32),
        "head.w": rng.normal(size=(20, 2)).astype(np.float32),
    }


def test_chain_runs_in_order_and_collects_spends() -> None:
    specs = [
        {"name": "exclude", "tensors": ["head.*"]},
        {"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.0},
        {"name": "svt", "fraction": 0.5, "gamma": 0.1, "tau": 0.0},
    ]
    chain = build_chain(specs)
    out, spends = apply_chain(chain, _upd(), np.random.default_rng(1))
    assert [s.mechanism for s in spends] == ["gaussian", "svt"]
    # exclude first: the gaussian noise lands on the zeroed head, then SVT may share noisy head entries
    reversed_chain = build_chain(list(reversed(specs)))
    out2, spends2 = apply_chain(reversed_chain, _upd(), np.random.default_rng(1))
    assert [s.mechanism for s in spends2] == ["svt", "gaussian"]
    assert not out2["head.w"].any()  # exclude last: head is zero whatever came before
    assert out["head.w"].any()  # exclude first, then noise: head carries noise only


def test_exclude_then_noise_never_carries_the_excluded_value() -> None:
    upd = _upd()
    upd["head.w"][:] = 1e6  # a value no amount of N(0, 1) noise hides
    chain = build_chain([ExcludeSpec(tensors=("head.w",)), GaussianSpec(clip=1.0, noise_multiplier=1.0)])
    out, _ = apply_chain(chain, upd, np.random.default_rng(2))
    assert np.abs(out["head.w"]).max() < 10


def test_specs_reject_unknown_names_fields_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="laplace|tag"):
        parse_specs([{"name": "laplace", "epsilon": 1.0}])
    with pytest.raises(ConfigError, match="eps: Extra inputs"):
        parse_specs([{"name": "svt", "epsilon": 1.0, "eps": 2.0}])
    with pytest.raises(ConfigError, match="fraction"):
        parse_specs([{"name": "svt", "fraction": 1.5}])
    with pytest.raises(ConfigError):
        parse_specs([{"name": "exclude"}])
    with pytest.raises(ConfigError):
        parse_specs([{"name": "gaussian", "clip": 1.0, "noise_multiplier": 0}])
    specs = parse_specs([{"name": "percentile", "percentile": 10}, SvtSpec(epsilon=0.2)])
    assert specs == [PercentileSpec(percentile=10), SvtSpec(epsilon=0.2)]


def test_stronger_or_equal() -> None:
    svt = SvtSpec(fraction=0.1, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6)
    assert stronger_or_equal(svt, svt)
    assert stronger_or_equal(SvtSpec(fraction=0.05, epsilon=0.05, tau=1.0), svt)
    for weaker in (
        SvtSpec(fraction=0.2),
        SvtSpec(epsilon=0.2),
        SvtSpec(noise_var=0.2),
        SvtSpec(gamma=1e-4),
    ):
        assert not stronger_or_equal(weaker, svt)
    g = GaussianSpec(clip=1.0, noise_multiplier=1.0, delta=1e-5)
    assert stronger_or_equal(GaussianSpec(clip=0.5, noise_multiplier=2.0, delta=1e-6), g)
    assert not stronger_or_equal(GaussianSpec(clip=1.0, noise_multiplier=0.9), g)
    assert not stronger_or_equal(GaussianSpec(clip=1.1, noise_multiplier=1.0), g)
    assert not stronger_or_equal(GaussianSpec(clip=1.0, noise_multiplier=1.0, delta=1e-4), g)
    p = PercentileSpec(percentile=10, gamma=0.01)
    assert stronger_or_equal(PercentileSpec(percentile=5, gamma=0.001), p)
    assert not stronger_or_equal(PercentileSpec(percentile=5), p)  # no clip where policy clips
    assert not stronger_or_equal(PercentileSpec(percentile=20, gamma=0.01), p)
    e = ExcludeSpec(tensors=("head.*",))
    assert stronger_or_equal(ExcludeSpec(tensors=("head.*", "bn.*")), e)
    assert not stronger_or_equal(ExcludeSpec(tensors=("bn.*",)), e)
    assert not stronger_or_equal(svt, g)  # a different filter is never a substitute


def test_chain_shortfalls_names_missing_and_weaker_filters() -> None:
    policy = [ExcludeSpec(tensors=("head.*",)), SvtSpec(epsilon=0.1)]
    assert chain_shortfalls([ExcludeSpec(tensors=("head.*",)), SvtSpec(epsilon=0.05)], policy) == []
    reasons = chain_shortfalls([SvtSpec(epsilon=0.5)], policy)
    assert len(reasons) == 2
    assert "exclude: missing" in reasons[0] and "svt: weaker" in reasons[1]


def test_worst_case_spends() -> None:
    specs = [ExcludeSpec(tensors=("x",)), SvtSpec(), GaussianSpec(clip=1.0, noise_multiplier=1.0)]
    spends = worst_case_spends(specs, n_params=1000, rounds=3)
    assert [s.mechanism for s in spends] == ["svt", "gaussian"] * 3
    assert spends[0].epsilon == svt_epsilon(1000, 0.1, 0.1, 0.1)
    assert spend_of(ExcludeSpec(tensors=("x",)), 10) is None


NVFLARE_PRIVACY_JSON = {
    "scopes": [
        {
            "name": "public",
            "properties": {"train_dataset": "/data/public/train"},
            "task_result_filters": [
                {
                    "path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
                    "args": {"percentile": 10, "gamma": 0.01},
                }
            ],
            "task_data_filters": [],
        },
        {
            "name": "private",
            "task_result_filters": [
                {
                    "path": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
                    "args": {"exclude_vars": ["fc.weight", "fc.bias"]},
                },
                {
                    "path": "nvflare.app_common.filters.svt_privacy.SVTPrivacy",
                    "args": {"fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6},
                },
            ],
        },
    ],
    "default_scope": "public",
}


def test_from_nvflare_translates_one_to_one() -> None:
    private = from_nvflare(NVFLARE_PRIVACY_JSON, scope="private")
    assert private == [
        ExcludeSpec(tensors=("fc.weight", "fc.bias")),
        SvtSpec(fraction=0.1, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6),
    ]
    assert from_nvflare(NVFLARE_PRIVACY_JSON) == [PercentileSpec(percentile=90, gamma=0.01)]
    assert SvtSpec.from_nvflare({"epsilon": 0.3}) == SvtSpec(epsilon=0.3)
    assert ExcludeSpec.from_nvflare({"exclude_vars": "fc.*"}) == ExcludeSpec(regex="fc.*")
    with pytest.raises(ConfigError, match="no secagg equivalent"):
        from_nvflare({"task_result_filters": [{"path": "my.custom.Filter", "args": {}}]})
    with pytest.raises(ConfigError, match="scope"):
        from_nvflare(NVFLARE_PRIVACY_JSON, scope="nope")
    with pytest.raises(ConfigError):
        SvtSpec.from_nvflare({"epsilon": 0.1, "typo": 1})


def test_policy_vocabulary_builds_a_chain() -> None:
    # the job/policy vocabulary (secagg.jobs.filters, policies/schema.json) is read as is
    from secagg.jobs.filters import ExcludeFilter, PercentileFilter, SvtFilter

    required = [
        SvtFilter(name="svt", fraction=0.25, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6),
        PercentileFilter(name="percentile", percentile=25, gamma=0.01),
        ExcludeFilter(name="exclude", tensors=["head.*"]),  # last: SVT noise could land on it otherwise
        {"name": "dpsgd", "target_epsilon": 1.0, "target_delta": 1e-5, "max_grad_norm": 1.0},
    ]
    specs = parse_specs(required)
    assert specs[2] == ExcludeSpec(tensors=("head.*",))
    assert specs[1] == PercentileSpec(percentile=25, gamma=0.01)
    chain = build_chain(required)
    assert len(chain) == 3  # dpsgd is applied by the training runner, not on the update
    out, spends = apply_chain(chain, _upd(), np.random.default_rng(3))
    assert not out["head.w"].any() and [s.mechanism for s in spends] == ["svt"]
    assert stronger_or_equal(
        {"name": "dpsgd", "target_epsilon": 0.5, "target_delta": 1e-6, "max_grad_norm": 1.0}, required[3]
    )
    assert not stronger_or_equal(
        {"name": "dpsgd", "target_epsilon": 2.0, "target_delta": 1e-5, "max_grad_norm": 1.0}, required[3]
    )
    worst = worst_case_spends(required, n_params=1000, rounds=2)
    assert [s.mechanism for s in worst] == ["svt", "dpsgd"] * 2
    assert worst[1].epsilon == 1.0 and worst[1].noise_multiplier is None  # basic: a sound upper bound
