"""Approaches of a study, one module per kind (see the ``approaches:`` config key)."""
