"""Stamen's Flower ClientApp: one device taking part in federated matrix factorisation.

The device's user factor is kept in the node's ``context.state`` between rounds and never
put into a message. ``fit`` returns the dense update of the shared parameters and the
local training loss; ``evaluate`` ranks the device's held-out item locally and returns
only the resulting metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import Mod

from stamen.client.local import LocalSettings, build_local_model, local_update
from stamen.client.record_dp import record_dp_update
from stamen.client.store import DeviceData, read_device_data
from stamen.models.batches import UserItems
from stamen.models.metrics import batch_metrics
from stamen.privacy import RecordDP, SignatureError, clip_update, gaussian_noise, verify_arrays

__all__ = [
    "MFClient",
    "USER_STATE_KEY",
    "VALID_METRICS",
    "build_client_app",
    "make_client_fn",
]

#: Key of the user factor in the node's persistent ``context.state``.
USER_STATE_KEY = "stamen-user-factor"

#: Validation metrics a device reports beside the test metrics (prefixed ``valid_``).
VALID_METRICS = ("hr@10", "ndcg@10", "sampled_hr@10")

_LOCAL_KEYS = frozenset(LocalSettings.model_fields)


class MFClient(NumPyClient):
    """A device holding one user's interactions (see module docstring)."""

    def __init__(
        self,
        data: DeviceData,
        state: RecordDict,
        *,
        seed: int,
        row: int,
        release_key: bytes | None = None,
    ) -> None:
        self.data = data
        self.state = state
        self.seed = seed
        self.row = row
        self.release_key = release_key

    def _verify(self, parameters: list[np.ndarray], config: dict) -> None:
        """Refuse a global model whose Ed25519 signature does not verify."""
        if self.release_key is None:
            return
        signature = config.get("release-signature")
        if not isinstance(signature, bytes):
            raise SignatureError("model release is unsigned; this device requires signed releases")
        verify_arrays(
            parameters, signature, round=int(config["server-round"]), public_key=self.release_key
        )

    def _rng(self, config: dict, purpose: int) -> np.random.Generator:
        return np.random.default_rng(
            [self.seed, self.row, int(config.get("server-round", 0)), purpose]
        )

    def _factor(self) -> np.ndarray | None:
        if USER_STATE_KEY in self.state:
            return self.state[USER_STATE_KEY].to_numpy_ndarrays()[0]  # type: ignore[union-attr]
        return None

    def _keep(self, factor: np.ndarray) -> None:
        self.state[USER_STATE_KEY] = ArrayRecord(numpy_ndarrays=[factor.astype(np.float32)])

    @staticmethod
    def _settings(config: dict) -> LocalSettings:
        return LocalSettings.model_validate({k: v for k, v in config.items() if k in _LOCAL_KEYS})

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """One local step; uploads only the dense update of the shared parameters (and its
        training loss unless the server's ``fit-metrics`` says the run is private). With
        ``record-dp-*`` keys in ``config`` the step is record-level DP-SGD
        (``stamen.client.record_dp``), and the user factor is only ever trained by it."""
        self._verify(parameters, config)
        record_dp = RecordDP.from_config(config)
        if record_dp is None:
            result = local_update(
                parameters,
                self._factor(),
                items=self.data.train_items,
                settings=self._settings(config),
                rng=self._rng(config, 0),
            )
        else:
            result = record_dp_update(
                parameters,
                self._factor(),
                items=self.data.train_items,
                settings=self._settings(config),
                record_dp=record_dp,
                rng=self._rng(config, 0),
            )
        self._keep(result.user_factor)
        metrics = {"train_loss": float(result.metrics["train_loss"])}
        return (
            self._privatise(result.delta, config),
            1,
            metrics if config.get("fit-metrics", True) else {},
        )

    def _privatise(self, delta: list[np.ndarray], config: dict) -> list[np.ndarray]:
        """User-level DP on the device: clip the whole update to ``dp-clip-norm`` and, in
        distributed mode, add this device's share of the noise (``dp-noise-std``)."""
        if "dp-clip-norm" not in config:
            return delta
        clipped, _ = clip_update(delta, max_norm=float(config["dp-clip-norm"]))
        std = float(config.get("dp-noise-std", 0.0))
        if std > 0:
            noise = gaussian_noise([a.shape for a in clipped], std=std, rng=self._rng(config, 2))
            clipped = [a + n for a, n in zip(clipped, noise, strict=True)]
        return clipped

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Rank the held-out items on the device: the test item (train and validation items
        excluded) and the validation item (train items excluded, ``valid_`` metrics).

        Under record-level DP the factor re-fitted for ranking is not stored: the stored
        factor, which the next DP-SGD step starts from, comes from DP-SGD alone."""
        self._verify(parameters, config)
        if not self.data.evaluable:
            return 0.0, 0, {}
        settings = self._settings(config)
        train = UserItems.single(self.data.train_items, n_items=self.data.n_items)
        model = build_local_model(
            parameters, self._factor(), settings=settings, items=train, rng=self._rng(config, 1)
        )
        if RecordDP.from_config(config) is None:
            self._keep(model.users.weight.detach()[0].numpy())
        with torch.no_grad():
            scores = model.logits(model(torch.zeros(1, dtype=torch.long)))
        test, valid = self.data.test_item, self.data.valid_item
        nll = float(torch.logsumexp(scores[0], 0) - scores[0, test])
        negatives = self.data.negatives[None, :]
        seen = UserItems.single(np.append(self.data.train_items, valid), n_items=self.data.n_items)
        metrics = {
            name: float(values[0])
            for name, values in batch_metrics(
                scores, np.array([test]), exclude=seen, negatives=negatives
            ).items()
        }
        for name, values in batch_metrics(
            scores, np.array([valid]), exclude=train, negatives=negatives, ks=(10,)
        ).items():
            if name in VALID_METRICS:
                metrics[f"valid_{name}"] = float(values[0])
        return nll, 1, metrics


def make_client_fn(
    store: str | Path,
    *,
    seed: int,
    release_key: bytes | None = None,
    store_key: bytes | None = None,
) -> Callable[[Context], Client]:
    """A ``client_fn`` for devices whose data is row ``partition-id`` of ``store``; with
    ``release_key`` (raw Ed25519 public key) they accept only signed global models;
    ``store_key`` decrypts a store encrypted at rest."""

    def client_fn(context: Context) -> Client:
        torch.set_num_threads(1)
        row = int(context.node_config["partition-id"])
        data = read_device_data(store, row, key=store_key)
        client = MFClient(data, context.state, seed=seed, row=row, release_key=release_key)
        return client.to_client()

    return client_fn


def build_client_app(
    store: str | Path,
    *,
    seed: int,
    secure_aggregation: bool,
    release_key: bytes | None = None,
    store_key: bytes | None = None,
    outer_mods: Sequence[Mod] = (),
) -> ClientApp:
    """The ClientApp for devices reading ``store`` (decrypted with ``store_key`` when it is
    encrypted at rest); with ``secure_aggregation`` every update goes through Flower's
    SecAgg+ mod before it leaves the device. ``outer_mods`` wrap everything (they see
    exactly what the device sends; tests audit with them)."""
    mods = [*outer_mods, *([secaggplus_mod] if secure_aggregation else [])]
    client_fn = make_client_fn(store, seed=seed, release_key=release_key, store_key=store_key)
    return ClientApp(client_fn=client_fn, mods=mods)
