"""The results table and the figures of a study."""
