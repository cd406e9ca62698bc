"""PFedRec (Zhang et al., IJCAI 2023): a personal score function per device and per-device
fine-tuning of the federated item embeddings."""

__all__: list[str] = []
