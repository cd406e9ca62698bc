"""The evaluation protocol: the split, held-out items, the scoring harness, results and the
attack that must fail."""

__all__: list[str] = []
