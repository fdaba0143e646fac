"""Shared fixtures. Tests run in float64 unless they opt into float32 explicitly."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def keys():
    """An iterator of fresh PRNG keys."""

    def gen():
        key = jax.random.key(0)
        while True:
            key, sub = jax.random.split(key)
            yield sub

    return gen()
