"""Package-wide numerical configuration.

popkpd computes in float64: PK/PD states span many orders of magnitude (nmol of drug next to
cells per microlitre), and float32 is the first suspect for step-count blow-ups and NaN gradients.
Importing popkpd therefore sets ``jax_enable_x64 = True``. Set it yourself before importing jax
arrays you pass in, or they will be float32 and promoted.
"""

import jax

jax.config.update("jax_enable_x64", True)
