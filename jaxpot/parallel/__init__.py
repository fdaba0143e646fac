"""Beyond one device: a model exported as a portable ``jax.export`` bundle
(:mod:`jaxpot.parallel.export`), and the ``jaxpot export`` command.

Data-parallel training lives with the training loop (:mod:`jaxpot.train.sharding`), since the
loop places its batches itself.
"""
