"""The on-device recommendation pipeline: candidate generators, the ranker's features, re-
ranking, reasons."""

__all__: list[str] = []
