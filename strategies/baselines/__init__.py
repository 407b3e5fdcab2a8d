"""Baselines: one sample (``direct``) and self-consistency, with its adaptive stop."""
