"""Privacy building blocks: secure-aggregation settings (more to come: DP, encryption).

Imports no other Stamen package and never ``flwr``.
"""

from stamen.privacy.secagg import SecAggSettings

__all__ = ["SecAggSettings"]
