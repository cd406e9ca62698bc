"""The ranker: a small model that orders the candidates the generators proposed."""

__all__: list[str] = []
