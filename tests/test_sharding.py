"""Data-parallel training: the same losses and parameters on 1, 2 and 4 devices, a checkpoint
written on 4 devices resumed on 1, and two ``jax.distributed`` processes matching one.

The CPU backend's device count is fixed when JAX starts, so each case runs
``tests/sharded_fit_worker.py`` in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve().parent / "sharded_fit_worker.py"


def _env(n_devices: int | None) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--x")
    if n_devices:
        flags += f" --xla_force_host_platform_device_count={n_devices}"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    return env


def _run(args, n_devices: int | None = 4, timeout: int = 600) -> None:
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], env=_env(n_devices),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "runs.json"
    ckpt = out.parent / "ckpt"
    _run([out, "--devices", 1, 2, 4, "--checkpoint", ckpt])
    return json.loads(out.read_text())


def test_same_training_on_1_2_4_devices(sharded_runs):
    one = sharded_runs["1"]
    assert one["n_devices_seen"] == 4 and len(one["losses"]) == 20
    # training did something (the loss fell), so equal losses are not equal by accident
    assert one["losses"][-1] < 0.5 * one["losses"][0]
    for n in ("2", "4"):
        run = sharded_runs[n]
        assert f"'batch': {n}" in run["shardings"][0], run["shardings"]  # really sharded
        assert _rel(run["losses"], one["losses"]) < 1e-5
        assert _rel(run["params"], one["params"]) < 1e-5
        # evaluation with each batch spread over the devices: the same metrics
        a, b = run["eval_one_device"], run["eval_sharded"]
        assert a["n_structures"] == b["n_structures"] == 4
        for key in ("energy_mae_mev_per_atom", "force_mae_mev_per_a"):
            assert a[key] > 0 and b[key] == pytest.approx(a[key], rel=1e-5), key


def test_checkpoint_from_4_devices_resumes_on_1(sharded_runs):
    resumed = sharded_runs["resumed_on_1"]["losses"]
    full = sharded_runs["4"]["losses"]
    # 3 of 5 epochs (4 steps each) ran on 4 devices before the kill; the resumed run did the
    # last 8 steps
    assert len(resumed) == 8
    assert _rel(resumed, full[12:]) < 1e-5
    assert _rel(sharded_runs["resumed_on_1"]["params"], sharded_runs["4"]["params"]) < 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes compiling NequIP: about a minute of CPU
def test_two_processes_match_one(sharded_runs, tmp_path):
    out = tmp_path / "mp.json"
    port = _free_port()
    cmd = [sys.executable, str(WORKER), str(out), "--devices", "2",
           "--num-processes", "2", "--port", str(port), "--process-id"]
    procs = [subprocess.Popen(cmd + [str(k)], env=_env(None), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    run = json.loads(out.read_text())["2"]
    assert run["n_devices_seen"] == 2  # one device in each of the two processes
    assert len(run["losses"]) == 20
    assert _rel(run["losses"][:10], sharded_runs["1"]["losses"][:10]) < 1e-5


def test_bad_device_counts():
    from jaxpot.train.sharding import data_parallel, resolve_devices

    with pytest.raises(ValueError, match="asked for 99"):
        resolve_devices(99, [4])
    with pytest.raises(ValueError, match="asked for 0"):
        resolve_devices(0, [4])
    import jax

    cpu = jax.devices()[0]
    with pytest.raises(ValueError, match="batch size 3 is not a multiple of the 2 devices"):
        resolve_devices([cpu, cpu], [4, 3])
    assert data_parallel(None, batch_sizes=[3]) is None  # one CPU device here: no mesh
    assert len(resolve_devices(None, [3])) == 1
