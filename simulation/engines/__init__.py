"""Federated engines: Flower's simulation runtime and the batched engine that replays the
same rounds."""

__all__: list[str] = []
