"""On-the-fly active learning: MD with an uncertain model, an oracle labels what it is unsure
of, refit, repeat until the stopping criteria hold (see :mod:`jaxpot.active.loop`).

::

    from jaxpot import active
    result = active.run_active(frames, "ase.calculators.emt:EMT", active.gap_fitter(),
                               "al_run", active.ActiveConfig(temperatures=(300, 900)))
"""

from jaxpot.active.criteria import StoppingCriteria, block_standard_error
from jaxpot.active.fitters import ensemble_fitter, gap_fitter
from jaxpot.active.loop import FIELDS, ActiveConfig, ActiveResult, plot_report, run_active
from jaxpot.active.oracle import Oracle, labelled, make_oracle

__all__ = ["ActiveConfig", "ActiveResult", "FIELDS", "Oracle", "StoppingCriteria",
           "block_standard_error", "ensemble_fitter", "gap_fitter", "labelled", "make_oracle",
           "plot_report", "run_active"]
