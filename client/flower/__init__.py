"""The device's Flower side: the ClientApp, the deployment's SuperNode and SuperExec,
virtual devices, and what a device computes for a round."""

__all__: list[str] = []
