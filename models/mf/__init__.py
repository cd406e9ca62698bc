"""Matrix factorisation: the private user table and shared item side, its device step and
settings."""

__all__: list[str] = []
