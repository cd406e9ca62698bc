"""FedRAP (Li, Long and Zhou, ICLR 2024): a shared global item table and, per device, a
private additive item table and score function."""

__all__: list[str] = []
