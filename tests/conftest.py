"""Shared fixtures. Tests run in float64 unless they opt into float32 explicitly.

The suite is compile-bound, so it runs with JAX's persistent compilation cache in a fresh
folder per session, shared by the pytest-xdist workers and by the ``jaxpot`` subprocesses the
CLI tests start: a program that several tests build (the same model, shape and dtype) compiles
once. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep a cache between runs.
"""

import os
import tempfile

# Before JAX is imported: the xdist workers inherit these from the controller's environment.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxpot-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture
def x64_off():
    """Global 64-bit mode off during the test (restored after), so the test can see whether
    library code switches it on (a ``jax.enable_x64(False)`` context would hide that)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)
