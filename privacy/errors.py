"""Exceptions raised by the privacy building blocks.

The tree is rooted in builtins so callers can catch one family or one case::

    Exception
    └── PrivacyError
        ├── BudgetExceededError  the (ε, δ) budget would be overspent
        ├── DecryptionError      wrong key, tampered, truncated or unknown-version blob
        └── SignatureError       a model release does not verify

Invalid arguments (a negative clip norm, an update of the wrong shape) raise the builtin
``ValueError``: they are a caller's mistake, not a privacy failure.
"""

from __future__ import annotations

__all__ = ["BudgetExceededError", "DecryptionError", "PrivacyError", "SignatureError"]


class PrivacyError(Exception):
    """Base class of every privacy failure raised by ``stamen.privacy``."""


class DecryptionError(PrivacyError):
    """Encrypted data could not be authenticated or decoded; nothing was returned."""


class SignatureError(PrivacyError):
    """A model release's signature does not verify: the release must not be used."""


class BudgetExceededError(PrivacyError):
    """Recording more rounds would spend more than the target privacy budget."""
