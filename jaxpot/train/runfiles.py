"""The files of a training run: its fingerprint, and an output directory that is safe to write.

``jaxpot train --out DIR`` writes ``model``, ``checkpoint``, ``config.json``, ``metrics.csv``,
``plots/`` and ``run.json``. ``run.json`` records the run's fingerprint (model, options and the
content hashes of the data files, see :func:`fingerprint`). Before anything is written,
:func:`claim_out_dir` refuses a directory that holds files of those names which are not from a
jaxpot run of the same fingerprint, and an input file that is one of those outputs.
"""

from __future__ import annotations

import hashlib
import json
import os

from jaxpot.train.checkpoint import atomic_write_bytes, fingerprint_differences

__all__ = ["OUTPUTS", "MANIFEST", "fingerprint", "file_hash", "claim_out_dir"]

OUTPUTS = ("model", "checkpoint", "config.json", "metrics.csv", "plots")
"""Names ``jaxpot train`` writes in its output directory (besides :data:`MANIFEST`)."""

MANIFEST = "run.json"

# Options that make a different run (resuming across a change of any of them is refused). The
# learning rate, epochs, budget, patience and the like may change between resumes.
_IDENTITY = ("model", "model_kwargs", "cutoff", "energy_key", "forces_key", "stress_key",
             "batch_size", "seed", "dtype", "trainable_refs", "max_shapes")


def file_hash(path: str | os.PathLike) -> str:
    """First 16 hex digits of the SHA-256 of a file's content.

    Raises:
      FileNotFoundError: naming the file.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(path)}: no such file") from None
    return h.hexdigest()[:16]


def fingerprint(config) -> dict:
    """A flat JSON dict that identifies a training run of ``config`` (a ``TrainConfig``).

    Holds the options in ``_IDENTITY`` and the content hashes of the train (and valid) files;
    without a valid file, the held-out fraction too.
    """
    d = config.to_dict()
    out = {k: json.dumps(d[k], sort_keys=True) if isinstance(d[k], dict) else d[k]
           for k in _IDENTITY}
    out["train data"] = file_hash(config.train)
    if config.valid:
        out["valid data"] = file_hash(config.valid)
    else:
        out["valid_fraction"] = d["valid_fraction"]
    return out


def _read_manifest(out: str) -> dict | None:
    try:
        with open(os.path.join(out, MANIFEST)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "jaxpot-train-run" else None


def _older_jaxpot_run(out: str) -> bool:
    """True when ``out/config.json`` is a ``jaxpot train`` config (runs before ``run.json``)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"train", "model", "out", "batch_size"} <= set(data)


def claim_out_dir(out: str, config, fp: dict, *, restart: bool) -> bool:
    """Check that ``out`` may receive this run's files, then record the run in ``run.json``.

    Refuses (``ValueError`` naming the files) when an input file is one of the outputs; when
    ``out`` holds output-named files without a jaxpot ``run.json`` (a user's own files); and,
    unless ``restart``, when they come from a jaxpot run with another fingerprint.

    Returns:
      True when ``out`` already held this run's files (a resume is possible).
    """
    inputs = {"--train": config.train, "--valid": config.valid}
    for name in OUTPUTS + (MANIFEST,):
        target = os.path.join(out, name)
        for flag, path in inputs.items():
            if path and os.path.exists(target) and os.path.samefile(path, target):
                raise ValueError(f"{flag} {path} is {target}, an output of this run that would "
                                 "be overwritten; move the input or choose another --out")
    present = [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]
    manifest = _read_manifest(out)
    if manifest is None and os.path.exists(os.path.join(out, MANIFEST)):
        present.append(MANIFEST)  # a run.json that jaxpot did not write
    if present and manifest is None and _older_jaxpot_run(out):
        manifest = {"fingerprint": None}  # a run of an older jaxpot: no fingerprint to match
    if present and manifest is None:
        raise ValueError(f"{out} already holds {', '.join(present)}, not from a jaxpot train "
                         "run (no run.json written by jaxpot); they would be overwritten: "
                         "choose another --out or move them")
    same = manifest is not None and not fingerprint_differences(manifest.get("fingerprint"), fp)
    if present and not same and not restart:
        diff = fingerprint_differences(manifest.get("fingerprint"), fp)
        raise ValueError(f"{out} holds the files of a different jaxpot train run "
                         f"({'; '.join(d.replace('the checkpoint', 'that run') for d in diff)}); "
                         "use --restart to overwrite them, or another --out")
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, MANIFEST), json.dumps(
        {"format": "jaxpot-train-run", "fingerprint": fp}, indent=2).encode())
    return bool(present) and same
