"""vocabseg: in-vocabulary / out-of-vocabulary panoptic segmentation studies.

The package holds all logic; the Snakemake workflow only calls the ``vocabseg``
console script (see :mod:`vocabseg.cli`).
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting collapse when another process holds a core:
# a 2-thread training step measured 0.32 s with passive waiting and 1.7 s with
# spinning (1 thread: 0.26 s) beside one busy process on 2 cores. Studies run several
# jobs side by side, so wait passively unless the user chose otherwise. Takes effect
# when vocabseg is imported before torch (the command line and the training entry).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
