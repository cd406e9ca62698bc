"""The two-tower retrieval model: item tower over ids and public content, user tower over
the on-device history and context, and its sampled-softmax loss."""

__all__: list[str] = []
