"""Datasets: Cityscapes labels and layout, the synthetic city, vocabulary splits."""
