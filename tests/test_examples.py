"""Run every example with tiny step counts in a temporary folder and check what it wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_a_runnable_percent_script():
    for path in sorted(EXAMPLES.glob("*.py")):
        text = path.read_text()
        assert "# %%" in text, f"{path.name} is not a jupytext percent script"
        assert "def main(" in text and 'if __name__ == "__main__":' in text, path.name


def test_fit_lj_dimer(tmp_path):
    summary = _load("fit_lj_dimer").main(out_dir=tmp_path)
    assert summary["fitted"]["sigma"] == pytest.approx(3.4, rel=1e-10)
    assert summary["fitted"]["epsilon"] == pytest.approx(0.0104, rel=1e-10)
    assert summary["newton_steps"] <= 20
    assert (tmp_path / "fit_lj_dimer.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "fit.json").read_text())["fitted"] == summary["fitted"]


def test_nve_lj(tmp_path):
    summary = _load("nve_lj").main(steps=10, out_dir=tmp_path, repeat=2, log_every=5)
    assert summary["n_atoms"] == 32
    for name in ("energy_temperature.png", "nve_drift.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert json.loads((tmp_path / "summary.json").read_text())["n_atoms"] == 32
    temps = summary["mean_temperature_k"]
    assert set(temps) == {"Langevin NVT (melt)", "NVE", "Nosé–Hoover NVT"}
    assert all(np.isfinite(t) and 10.0 < t < 400.0 for t in temps.values()), temps
    # 10 steps of 5 fs at 120 K: the NVE energy is conserved to far better than 1 meV/atom.
    assert 0.0 <= summary["nve_max_drift_ev_per_atom"] < 1e-3
    assert summary["nve_atom_steps_per_s"] > 0


def test_chirality_chfclbr():
    out = _load("chirality_chfclbr").main()
    # ACSF and SOAP are blind to the mirror image; the chiral pseudoscalars are not.
    assert out["ACSF"][1] > 0 and out["SOAP"][1] > 0
    assert out["ACSF"][0] < 1e-10 * out["ACSF"][1]
    assert out["SOAP"][0] < 1e-10 * out["SOAP"][1]
    assert out["chiral"][0] > 0.5 * out["chiral"][1]


def test_ntk_width_gap_shrinks_with_width(x64_off):
    """The seed texts' claim: a wider network trained by gradient descent stays closer to its
    NTK (linearised) prediction. Measured here: 0.072, 0.0022, 0.0001 for widths 8, 64, 512."""
    import jax

    widths = (8, 64, 512)
    results = _load("ntk_width").main(steps=40, widths=widths, n_train=4, n_test=3)
    assert not jax.config.jax_enable_x64  # global flag (x64_off): float64 stays inside main()
    gaps = [results[w]["relative_rms_gap"] for w in widths]
    for w in widths:  # non-trivial: the networks really trained
        assert results[w]["loss_end"] < 0.1 * results[w]["loss_start"], (w, results[w])
    assert gaps[0] > 0.01, gaps  # the narrow network is visibly off its linearisation
    for narrow, wide in zip(gaps, gaps[1:], strict=False):
        assert wide < 0.5 * narrow, gaps
    assert results[widths[-1]]["corr"] > 0.999


@pytest.mark.slow  # CI time: the protocol and the hybrid training have default tests
def test_melting_cu(tmp_path):
    """Tiny run of the coexistence example with EMT (fixed volume, no classifier check, no
    heating curve; tests/test_melting.py covers those)."""
    summary = _load("melting_cu").main(reps=(2, 2, 4), temps=(800.0, 1900.0), steps=40,
                                       prep_steps=60, heat_steps=0, dt_fs=5.0,
                                       ensemble="langevin", out_dir=tmp_path, check_steps=0)
    r = summary["EMT"]
    assert np.isnan(r["check_crystal"])
    assert np.asarray(r["fractions"]).shape[0] == 2
    assert (tmp_path / "solid_fraction.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "summary.json").read_text())["EMT"]["temperatures"] == [800.0,
                                                                                          1900.0]


@pytest.mark.slow  # CI time: the protocol and the hybrid training have default tests
def test_nacl_hybrid():
    """Tiny run of the NaCl hybrid example: the fixed-charge hybrid's electrostatic part is the
    Ewald energy of the formal charges; QEq charges are neutral and not all zero."""
    out = _load("nacl_hybrid").main(repeat=1, seed=0)
    fixed, qeq = out["fixed"], out["qeq"]
    assert abs(fixed["ewald"]) > 10.0
    np.testing.assert_allclose(fixed["electrostatic"], fixed["ewald"], rtol=1e-8)
    assert sorted(set(fixed["charges"])) == [-1.0, 1.0]
    assert abs(qeq["total_charge"]) < 1e-10
    assert max(abs(q) for q in qeq["charges"]) > 1e-4


def test_uncertainty_active_cu(tmp_path):
    out = _load("uncertainty_active_cu").main(out_dir=tmp_path, calls=1, steps=40,
                                               temperatures=(900.0,))
    # unfamiliar frames (hot, strained) are flagged by both measures of uncertainty
    assert out["auroc_std"] >= 0.8 and out["auroc_mahalanobis"] >= 0.8
    assert out["spearman_std"] > 0.5
    assert out["n_iterations"] >= 1 and out["n_data"] >= 20
    assert (tmp_path / "uncertainty_ranking.png").stat().st_size > 10_000
    assert (tmp_path / "active" / "iterations.csv").exists()
