"""Properties from potentials and trajectories: vibrations and phonons, crystal properties
(equation of state, elastic constants, defect and surface energies), structure and transport
(RDF, S(q), MSD, diffusion, VACF, block averages), molecules (forces, torques, inertia), free
energies (biases, umbrella sampling, WHAM/MBAR, NEB) and melting.

Import the submodules directly, for example ``from jaxpot.analysis import vibrations``; this
package imports none of them, so that ``import jaxpot.analysis`` stays cheap.
"""
