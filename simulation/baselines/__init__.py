"""Baselines under the same protocol: popularity, centralised MF, DP popularity and private
ALS simulated."""

__all__: list[str] = []
