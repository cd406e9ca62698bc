"""Cryptography (from ``cryptography`` and SQLCipher, never hand-written): encryption at
rest, signed releases, SecAgg+ settings."""

__all__: list[str] = []
