"""vocabseg: in-vocabulary / out-of-vocabulary panoptic segmentation studies.

The package holds all logic; the Snakemake workflow only calls the ``vocabseg``
console script (see :mod:`vocabseg.cli`).
"""

__version__ = "0.1.0"
