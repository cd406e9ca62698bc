"""The embeddable device: its encrypted store, events, releases, impressions and keys."""

__all__: list[str] = []
