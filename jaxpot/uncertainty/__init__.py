"""How sure a model is: ensemble spreads, GP variances, distances in feature space, calibration.

Submodules: :mod:`~jaxpot.uncertainty.spread` (per-structure and per-atom predicted spreads of
ensembles and GAP), :mod:`~jaxpot.uncertainty.distance` (Mahalanobis distance of atomic
features from the training distribution), :mod:`~jaxpot.uncertainty.calibration` (scaling the
spreads so that stated intervals cover what they claim, and the ranking metrics).
"""

from jaxpot.uncertainty import distance as distance
