"""The README's main job, end to end at a tiny size: EMT data → train → eval → NVE MD."""

import json

from jaxpot import cli


def test_demo_end_to_end(tmp_path):
    code = cli.main(["demo", "--out", str(tmp_path), "--frames", "24",
                     "--time-budget-min", "0.5", "--md-steps", "40"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    valid = summary["validation"]
    # A model trained for seconds is poor but must be finite and not wild (the frames' force
    # RMS is ~700 meV/Å; NaN or exploding predictions fail here).
    assert 0 < valid["force_mae_mev_per_a"] < 1500
    assert 0 <= valid["energy_mae_mev_per_atom"] < 1000
    assert abs(summary["md"]["energy_drift_ev_per_atom_per_ps"]) < 1.0
    assert summary["md"]["n_atoms"] == 32 and summary["md"]["steps"] == 40
    # (metrics.csv appears only once an epoch has finished, which a 30 s budget may not allow)
    for name in ("model", "train.xyz", "md_log.csv", "plots/md_energy.png"):
        assert (tmp_path / name).exists(), name
