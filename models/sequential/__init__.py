"""The sequential model: a causal transformer over the on-device history, trained
next-item with sampled softmax."""

__all__: list[str] = []
