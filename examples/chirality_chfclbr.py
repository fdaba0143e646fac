# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Telling enantiomers apart: ACSF, SOAP and pseudoscalar features for CHFClBr
#
# Bromochlorofluoromethane is the textbook chiral molecule: a carbon with four different
# substituents. Its two enantiomers are mirror images. ACSF and the SOAP power spectrum are
# invariant under every orthogonal transformation, reflections included, so they give the
# *same* numbers for both enantiomers. The signed-volume features of
# `jaxpot.descriptors.chiral` are invariant only under proper rotations and flip sign under a
# reflection, so they separate the two.

# %%
import ase
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jaxpot.descriptors import acsf, chiral, soap  # noqa: E402
from jaxpot.system import System  # noqa: E402

SPECIES = [1, 6, 9, 17, 35]


def chfclbr(mirror: bool = False) -> ase.Atoms:
    """Tetrahedral CHFClBr with experimental C–X bond lengths (Å); ``mirror`` reflects x."""
    d = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    pos = np.vstack([[0.0, 0.0, 0.0], d * np.array([1.09, 1.36, 1.76, 1.93])[:, None]])
    if mirror:
        pos[:, 0] *= -1
    return ase.Atoms("CHFClBr", positions=pos)


# %%
def main(r_cut: float = 5.0) -> dict:
    """Compute the three descriptors for both enantiomers and report the differences."""
    left, right = chfclbr(), chfclbr(mirror=True)
    ap = acsf.grid(r_cut, SPECIES, n_radial=4, n_angular=2)
    sp = soap.soap_params(r_cut, 4, 4, SPECIES, sigma=0.5)
    cp = chiral.chiral_params(r_cut, SPECIES)
    out = {}
    for name, fn, cut in (
        ("ACSF", lambda s: acsf.acsf(s, ap), r_cut),
        ("SOAP", lambda s: soap.soap(s, sp), sp.neighbor_cutoff),
        ("chiral", lambda s: chiral.chiral(s, cp), r_cut),
    ):
        a = np.asarray(fn(System.from_ase(left, cutoff=cut)))
        b = np.asarray(fn(System.from_ase(right, cutoff=cut)))
        out[name] = (np.abs(a - b).max(), np.abs(a).max())
        print(f"{name:7s} max |left − right| = {out[name][0]:.3e}   (max |value| "
              f"{out[name][1]:.3e}, {a.shape[1]} features)")
    c_left = np.asarray(chiral.chiral(System.from_ase(left, cutoff=r_cut), cp))[0]
    c_right = np.asarray(chiral.chiral(System.from_ase(right, cutoff=r_cut), cp))[0]
    k = int(np.argmax(np.abs(c_left)))
    print(f"carbon's largest pseudoscalar: {c_left[k]:+.4f} Å³ (left) vs {c_right[k]:+.4f} Å³ "
          "(right)")
    return out


# %%
if __name__ == "__main__":
    main()
