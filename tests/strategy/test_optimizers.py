"""Each server step against the paper's formulas, evaluated by hand in scalar float arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.errors import ConfigError, UpdateRejected
from secagg.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, make_strategy

X0 = [1.0, -2.0, 0.5, 0.0]
# three rounds of average updates: mixed signs, zeros, and (for Yogi) both signs of v − Δ²
DELTAS = [
    [0.5, -0.1, 0.0, 2.0],
    [0.01, 0.3, -0.2, 0.0],
    [-0.4, 0.0, 0.05, 1.0],
]


def run(strategy, x0=X0, deltas=DELTAS):
    x = np.array(x0, dtype=np.float64)
    state = strategy.init_state(x)
    for d in deltas:
        x, state = strategy.apply(x, np.array(d), state)
    return x, state


def by_hand_fedopt(rule, eta, beta_1, beta_2, tau):
    """Algorithm 2 of Reddi et al., one coordinate at a time, m_{-1} = 0, v_{-1} = tau²."""
    xs = list(X0)
    ms = [0.0] * len(X0)
    vs = [tau * tau] * len(X0)
    for deltas in DELTAS:
        for i, d in enumerate(deltas):
            ms[i] = beta_1 * ms[i] + (1.0 - beta_1) * d
            d2 = d * d
            if rule == "adagrad":
                vs[i] = vs[i] + d2
            elif rule == "adam":
                vs[i] = beta_2 * vs[i] + (1.0 - beta_2) * d2
            else:  # yogi
                diff = vs[i] - d2
                sign = (diff > 0) - (diff < 0)
                vs[i] = vs[i] - (1.0 - beta_2) * d2 * sign
            xs[i] = xs[i] + eta * ms[i] / (math.sqrt(vs[i]) + tau)
    return xs, ms, vs


def test_fedavg_adds_the_average_update():
    x, state = run(FedAvg())
    expected = [((X0[i] + DELTAS[0][i]) + DELTAS[1][i]) + DELTAS[2][i] for i in range(4)]
    np.testing.assert_array_equal(x, expected)
    assert state.step == 3 and dict(state.buffers) == {}


def test_fedprox_server_step_is_fedavg_and_mu_reaches_the_sites():
    xa, _ = run(FedAvg())
    xp, state = run(FedProx(mu=0.1))
    np.testing.assert_array_equal(xa, xp)
    assert FedProx(mu=0.1).client_config() == {"strategy": "fedprox", "mu": 0.1}
    assert FedAvg().client_config() == {"strategy": "fedavg"}
    assert state.params == {"mu": 0.1}


def test_fedavgm_heavy_ball():
    eta, beta = 0.5, 0.8
    xs, vel = list(X0), [0.0] * 4
    for deltas in DELTAS:
        for i, d in enumerate(deltas):
            vel[i] = beta * vel[i] + d
            xs[i] = xs[i] + eta * vel[i]
    x, state = run(FedAvgM(eta=eta, momentum=beta))
    np.testing.assert_array_equal(x, xs)
    np.testing.assert_array_equal(state.buffers["velocity"], vel)


@pytest.mark.parametrize(
    ("cls", "rule", "kwargs"),
    [
        (FedAdagrad, "adagrad", {"eta": 0.1, "beta_1": 0.5, "tau": 0.01}),
        (FedAdagrad, "adagrad", {"eta": 0.3, "beta_1": 0.0, "tau": 0.2}),
        (FedAdam, "adam", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
        (FedAdam, "adam", {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.7, "tau": 0.3}),
        (FedYogi, "yogi", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
        (FedYogi, "yogi", {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.7, "tau": 0.3}),
    ],
)
def test_fedopt_matches_algorithm_2(cls, rule, kwargs):
    full = {"beta_2": 0.0, **kwargs}
    xs, ms, vs = by_hand_fedopt(rule, full["eta"], full["beta_1"], full["beta_2"], full["tau"])
    x, state = run(cls(**kwargs))
    np.testing.assert_array_equal(x, xs)
    np.testing.assert_array_equal(state.buffers["m"], ms)
    np.testing.assert_array_equal(state.buffers["v"], vs)
    assert state.step == 3


def test_yogi_v_moves_additively_where_adam_decays():
    """With Δ = 0 after a large update, Adam's v shrinks by β2 each round; Yogi's stays put."""
    kw = {"eta": 0.1, "beta_1": 0.5, "beta_2": 0.7, "tau": 0.01}
    deltas = [[3.0], [0.0], [0.0]]
    _, sa = run(FedAdam(**kw), x0=[0.0], deltas=deltas)
    _, sy = run(FedYogi(**kw), x0=[0.0], deltas=deltas)
    v1 = 0.7 * 1e-4 + 0.3 * 9.0  # both after round 1 would differ only by v_{-1}; check Yogi's own
    assert sy.buffers["v"][0] == pytest.approx(1e-4 + 0.3 * 9.0, rel=1e-15)
    assert sa.buffers["v"][0] == pytest.approx(v1 * 0.7 * 0.7, rel=1e-15)


def test_initial_v_is_tau_squared_not_zero():
    """Pins the documented choice v_{-1} = tau² (paper), not Flower's zeros."""
    s = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.5)
    state = s.init_state(np.zeros(1))
    np.testing.assert_array_equal(state.buffers["v"], [0.25])
    np.testing.assert_array_equal(state.buffers["m"], [0.0])
    x, _ = s.apply(np.zeros(1), np.ones(1), state)
    # m = 0.1, v = 0.99·0.25 + 0.01 = 0.2575 -> 0.01 / (sqrt(0.2575) + 0.5); zeros would give 0.01 / 0.6
    assert x[0] == pytest.approx(0.01 / (math.sqrt(0.2575) + 0.5), rel=1e-15)
    assert x[0] != pytest.approx(0.01 / 0.6)


def test_apply_does_not_mutate_inputs_or_old_state():
    s = FedAdam()
    x = np.array(X0)
    d = np.array(DELTAS[0])
    state = s.init_state(x)
    before = (x.copy(), d.copy(), {k: v.copy() for k, v in state.buffers.items()})
    s.apply(x, d, state)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(d, before[1])
    for k, v in state.buffers.items():
        np.testing.assert_array_equal(v, before[2][k])
        assert not v.flags.writeable
    assert state.step == 0


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_every_strategy_refuses_bad_updates(name):
    s = make_strategy({"name": name})
    x = np.array(X0)
    state = s.init_state(x)
    with pytest.raises(UpdateRejected, match="NaN or infinity") as e:
        s.apply(x, np.array([0.0, np.nan, 0.0, 0.0]), state)
    assert e.value.code == "non_finite"
    with pytest.raises(UpdateRejected, match="3 values, the global model 4"):
        s.apply(x, np.zeros(3), state)
    with pytest.raises(UpdateRejected, match="flat vector"):
        s.apply(x, np.zeros((2, 2)), state)
    with pytest.raises(UpdateRejected, match="float vector"):
        s.apply(x, np.zeros(4, dtype=np.int64), state)


def test_float32_inputs_are_widened_exactly():
    s = FedAvg()
    x32 = np.array(X0, dtype=np.float32)
    out, _ = s.apply(x32, np.array(DELTAS[0], dtype=np.float32), s.init_state(x32))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(
        out, np.array(X0) + np.array(DELTAS[0], dtype=np.float32).astype(np.float64)
    )


def test_step_overflow_is_refused_not_propagated():
    s = FedAvg()
    x = np.array([1e308])
    with pytest.raises(UpdateRejected, match="fedavg step produced NaN or infinity"):
        s.apply(x, np.array([1e308]), s.init_state(x))
    # Δ² overflows into v while x stays finite: the state would be poisoned, so refuse too
    adam = FedAdam()
    with pytest.raises(UpdateRejected, match="fedadam step produced NaN or infinity"):
        adam.apply(np.zeros(1), np.array([1e200]), adam.init_state(np.zeros(1)))


def test_state_from_another_strategy_params_or_size_is_refused():
    x = np.array(X0)
    with pytest.raises(ConfigError, match="belongs to strategy 'fedadam', not 'fedyogi'"):
        FedYogi().apply(x, x, FedAdam().init_state(x))
    with pytest.raises(ConfigError, match="resuming would change the trajectory"):
        FedAdam(eta=0.5).apply(x, x, FedAdam(eta=0.1).init_state(x))
    with pytest.raises(ConfigError, match="model of 3 values"):
        FedAdam().apply(x, x, FedAdam().init_state(np.zeros(3)))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FedAdam, {"eta": 0.0}, r"eta must be in \(0.0, inf\)"),
        (FedAdam, {"beta_1": 1.0}, r"beta_1 must be in \[0.0, 1.0\)"),
        (FedYogi, {"beta_2": -0.1}, r"beta_2 must be in \[0.0, 1.0\)"),
        (FedAdagrad, {"tau": 0.0}, r"tau must be in \(0.0, inf\)"),
        (FedAvgM, {"momentum": 1.5}, r"momentum must be in"),
        (FedProx, {"mu": -1.0}, r"mu must be in \[0.0, inf\)"),
        (FedProx, {"mu": float("nan")}, "mu must be a finite number"),
        (FedAdam, {"eta": True}, "eta must be a finite number"),
    ],
)
def test_constructors_validate_parameters(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)
