"""Private ALS: the layout of the statistics a device contributes."""

__all__: list[str] = []
