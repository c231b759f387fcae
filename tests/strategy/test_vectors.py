from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import ConfigError, UpdateRejected
from secagg.strategy import FedAdam, Layout, flatten, unflatten


def model():
    rng = np.random.default_rng(3)
    return {
        "conv.weight": rng.normal(size=(2, 3, 2)).astype(np.float32),
        "conv.bias": rng.normal(size=(2,)).astype(np.float32),
        "head.weight": rng.normal(size=(1, 4)).astype(np.float64),
        "scale": np.array(0.5, dtype=np.float32),
    }


def test_flatten_concatenates_in_mapping_order_and_round_trips_exactly():
    tensors = model()
    vec, layout = flatten(tensors)
    assert vec.dtype == np.float64 and vec.shape == (12 + 2 + 4 + 1,)
    assert layout.names == ("conv.weight", "conv.bias", "head.weight", "scale")
    np.testing.assert_array_equal(vec[12:14], tensors["conv.bias"])
    back = unflatten(vec, layout)
    assert list(back) == list(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        assert back[k].tobytes() == t.tobytes()


def test_strategy_step_on_flat_vector_maps_back_to_tensors():
    tensors = model()
    vec, layout = flatten(tensors)
    s = FedAdam()
    new, _ = s.apply(vec, np.ones_like(vec), s.init_state(vec))
    back = unflatten(new, layout)
    assert back["conv.bias"].dtype == np.float32
    np.testing.assert_allclose(back["conv.bias"], new[12:14].astype(np.float32))


def test_layout_dict_round_trip_and_validation():
    _, layout = flatten(model())
    assert Layout.from_dict(layout.to_dict()) == layout
    bad = layout.to_dict()
    bad[1]["name"] = "conv.weight"
    with pytest.raises(ConfigError, match="duplicate tensor name 'conv.weight'"):
        Layout.from_dict(bad)
    with pytest.raises(ConfigError, match="dtype must be one of"):
        Layout.from_dict([{"name": "a", "shape": [1], "dtype": "int64"}])
    with pytest.raises(ConfigError, match="shape must be a list of ints"):
        Layout.from_dict([{"name": "a", "shape": [-1], "dtype": "float32"}])
    with pytest.raises(ConfigError, match="exactly the keys"):
        Layout.from_dict([{"name": "a", "shape": [1]}])
    with pytest.raises(ConfigError, match="must be a list"):
        Layout.from_dict({"a": 1})


def test_unflatten_refuses_wrong_length_and_non_float_tensors():
    vec, layout = flatten(model())
    with pytest.raises(UpdateRejected, match="has 18 values but the layout needs 19"):
        unflatten(vec[:-1], layout)
    with pytest.raises(UpdateRejected, match="flat vector"):
        unflatten(vec.reshape(1, -1), layout)
    with pytest.raises(ConfigError, match="not a float dtype"):
        flatten({"steps": np.array([1, 2])})


def test_empty_model():
    vec, layout = flatten({})
    assert vec.shape == (0,) and layout.size == 0 and unflatten(vec, layout) == {}
