"""Differential privacy: clipping, the Gaussian-sum mechanism and its random streams, user-
and record-level settings, Opacus accounting."""

__all__: list[str] = []
