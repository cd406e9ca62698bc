"""Baselines under the same protocol: popularity, centralised MF, the two-tower and
sequential models' own centralised reference, DP popularity and private ALS simulated."""

__all__: list[str] = []
