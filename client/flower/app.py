"""Stamen's Flower ClientApp: one device taking part in federated training of any
registered model (``stamen.models.registry``; the request's ``model`` key names it).

Each message opens the device of its partition (``stamen.client.VirtualDevices``) and
trains on the person's items as the device knows them, through the model's batch-first
device step called for this one device. A model's private state (MF's user factor) is
kept in the node's ``context.state`` between rounds and never put into a message. ``fit``
returns the dense update of the shared arrays and the local training loss;
``evaluate`` ranks the device's held-out items locally (supplied by the evaluation
protocol, which lives in ``stamen.simulation``) and returns only the resulting metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import Mod

from stamen.client.flower.analytics import evaluation_vectors, trending_vectors
from stamen.client.flower.statistics import ALS_STAGE_KEY, als_upload
from stamen.client.flower.virtual import VirtualDevices
from stamen.models.analytics import (
    ANALYTICS_QUERY_KEY,
    EVALUATION,
    QUERIES,
    TRENDING,
    metric_names_from_config,
)
from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.metrics import batch_metrics
from stamen.models.mf.settings import DEVICE_ID_KEY, LocalSettings
from stamen.models.ranker.model import (
    FEATURES,
    RANKER_METRICS,
    RANKER_STEP_KEY,
    RankerSettings,
    RankingExamples,
    check_ranker,
    list_metrics,
    ranker_updates,
)
from stamen.models.registry import DeviceInputs, RecModel, device_seeds, model_class
from stamen.privacy import (
    RecordDP,
    SignatureError,
    check_update,
    clip_update,
    gaussian_noise,
    verify_arrays,
)

__all__ = [
    "DeviceData",
    "HeldOut",
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


@dataclass(frozen=True)
class HeldOut:
    """A device's held-out items for federated evaluation: the validation and test items
    and the fixed sampled negatives (``-1``: none)."""

    valid_item: int
    test_item: int
    negatives: np.ndarray


@dataclass(frozen=True)
class DeviceData:
    """What a device trains and evaluates on: its items (catalogue rows), held-out items
    (``-1``: none), sampled negatives, and its items' event contexts and latest event
    times in seconds (``None``: unknown)."""

    train_items: np.ndarray
    valid_item: int
    test_item: int
    negatives: np.ndarray
    catalog: ReleaseCatalog
    train_contexts: np.ndarray | None = None
    train_times: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Items in the installed release's catalogue."""
        return len(self.catalog)

    @property
    def evaluable(self) -> bool:
        """Whether the device holds validation and test items."""
        return self.test_item >= 0 and self.valid_item >= 0


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
        ranking_example: Callable[[], tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> None:
        self.data = data
        self.state = state
        self.seed = seed
        self.row = row
        self.release_key = release_key
        # the device's replayed example for the ranker (Device.ranking_example), built
        # only when a ranker round asks for it
        self.ranking_example = ranking_example

    def get_properties(self, config: dict) -> dict:
        """The device's stable id (its partition), by which the server samples cohorts."""
        return {DEVICE_ID_KEY: self.row}

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

    def _model(self, config: dict) -> RecModel:
        """The requested model family with the settings the request carries."""
        cls = model_class(str(config.get("model", "mf")))
        fields = cls.settings_class.model_fields
        settings = cls.settings_class.model_validate(
            {k: v for k, v in config.items() if k in fields}
        )
        return cls(settings, self.data.catalog)

    def _inputs(self, items: np.ndarray, config: dict, purpose: int) -> DeviceInputs:
        seeds = device_seeds(
            np.array([self.row]),
            seed=self.seed,
            rnd=int(config.get("server-round", 0)),
            purpose=purpose,
        )
        return DeviceInputs(
            history=UserItems.single(
                items, n_items=self.data.n_items, contexts=self.data.train_contexts
            ),
            seeds=seeds,
            states=(self._factor(),),
        )

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """One local step; uploads only the dense update of the shared parameters (and its
        training loss unless the server's ``fit-metrics`` says the run is private). With
        ``record-dp-*`` keys in ``config`` the step is record-level DP-SGD
        (``stamen.client.flower.record_dp``), and the user factor is only ever trained by it."""
        self._verify(parameters, config)
        if ANALYTICS_QUERY_KEY in config:  # a private federated analytics query
            return self._answer(parameters, config), 1, {}
        if config.get(RANKER_STEP_KEY) is True:  # the ranker's weights, not the model's
            return self._ranker_step(parameters, config), 1, {}
        if ALS_STAGE_KEY in config:  # private ALS: counts or statistics, clipped and noised
            upload = als_upload(parameters, self.data.train_items, config)
            return self._privatise(upload, config), 1, {}
        model = self._model(config)
        record_dp = RecordDP.from_config(config)
        if record_dp is None:
            updates = model.device_updates(
                parameters, self._inputs(self.data.train_items, config, 0)
            )
            delta, factor, loss = updates.device(0), updates.states[0], updates.losses[0]
        else:
            if not isinstance(model.settings, LocalSettings):
                raise ValueError(f"record-level DP-SGD is not implemented for {model.name!r}")
            from stamen.client.flower.record_dp import record_dp_update  # Opacus: only for DP-SGD

            result = record_dp_update(
                parameters,
                self._factor(),
                items=self.data.train_items,
                settings=model.settings,
                record_dp=record_dp,
                rng=self._rng(config, 0),
            )
            delta, factor, loss = result.delta, result.user_factor, result.metrics["train_loss"]
        if factor is not None:
            self._keep(factor)
        metrics = {"train_loss": float(loss)}
        upload = self._privatise(delta, config)
        self._check(upload, parameters, config)
        return (
            upload,
            1,
            metrics if config.get("fit-metrics", False) is True else {},
        )

    def _ranker_step(self, parameters: list[np.ndarray], config: dict) -> list[np.ndarray]:
        """This device's update of the ranker (``stamen.models.ranker.model.ranker_updates``)
        from its own replayed example; a device without one (no release, too short a
        history, nothing it took in the list) sends weight decay only. Clipped, noised
        and checked like a model update, before SecAgg+ masks it."""
        check_ranker(parameters)
        deltas, _ = ranker_updates(
            parameters, self._ranking_examples(), RankerSettings.from_config(config)
        )
        upload = self._privatise([d[0] for d in deltas], config)
        self._check(upload, parameters, config)
        return upload

    def _ranking_examples(self) -> RankingExamples:
        """The device's replayed example as a batch of one (an empty list without one)."""
        example = self.ranking_example() if self.ranking_example is not None else None
        if example is None:
            example = (np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, bool))
        return RankingExamples.stack([example])

    def _ranker_evaluate(self, parameters: list[np.ndarray]) -> tuple[float, int, dict]:
        """The ranker's metrics (``stamen.models.ranker.model.RANKER_METRICS``) on the device's
        own offered list: what it took, in the top 10 as ``parameters`` order the list and
        as the list arrived. A device that took nothing in its list reports nothing."""
        check_ranker(parameters)
        values, took = list_metrics(parameters, self._ranking_examples())
        if not took[0]:
            return 0.0, 0, {}
        return 0.0, 1, dict(zip(RANKER_METRICS, map(float, values[0]), strict=True))

    @staticmethod
    def _check(upload: list[np.ndarray], parameters: list[np.ndarray], config: dict) -> None:
        """Refuse to send an update of the wrong shape, with non-finite values or (clipped
        and not noised here) above the clip norm: this runs before SecAgg+ masks it,
        after which nobody could tell it apart (``check_update``)."""
        clipped = "dp-clip-norm" in config and float(config.get("dp-noise-std", 0.0)) == 0
        bound = float(config["dp-clip-norm"]) * (1 + 1e-4) if clipped else math.inf
        check_update(upload, expected_shapes=[np.shape(a) for a in parameters], bound=bound)

    def _answer(self, parameters: list[np.ndarray], config: dict) -> list[np.ndarray]:
        """This device's answer to an analytics query (``stamen.models.analytics``): its
        bounded vector, scaled, clipped, noised (distributed DP) and checked, before
        SecAgg+ masks it."""
        query = str(config[ANALYTICS_QUERY_KEY])
        if query == TRENDING:
            vector = self._trending(config)
        elif query == EVALUATION:
            names = metric_names_from_config(str(config["analytics-metrics"]))
            _, n, metrics = self.evaluate(parameters, config)
            missing = [name for name in names if n and name not in metrics]
            if missing:
                raise ValueError(f"evaluation query asks for unknown metrics {missing}")
            values = np.array([[metrics[name] if n else 0.0 for name in names]])
            vector = evaluation_vectors(values, np.array([n > 0]))[0]
        else:
            raise ValueError(f"unknown analytics query {query!r}; known: {QUERIES}")
        scaled = [vector * float(config["analytics-scale"])]
        upload = self._privatise(scaled, config, purpose=3)
        self._check(upload, scaled, config)
        return upload

    def _trending(self, config: dict) -> np.ndarray:
        times = self.data.train_times
        items = self.data.train_items
        if times is None or len(times) != len(items):
            raise ValueError("this device knows no event times; it cannot answer trending")
        return trending_vectors(
            np.zeros(len(items), np.int64),
            items,
            times,
            n_devices=1,
            n_items=self.data.n_items,
            now=float(config["analytics-now"]),
            window=float(config["analytics-window"]),
            cap=int(config["analytics-cap"]),
        )[0]

    def _privatise(
        self, delta: list[np.ndarray], config: dict, *, purpose: int = 2
    ) -> list[np.ndarray]:
        """User-level DP on the device: clip the whole update to ``dp-clip-norm`` and, in
        distributed mode, add this device's share of the noise (``dp-noise-std``, drawn
        from a stream of its own per ``purpose``: training 2, analytics 3)."""
        if "dp-clip-norm" not in config:
            return delta
        clipped, _ = clip_update(delta, max_norm=float(config["dp-clip-norm"]))
        std = float(config.get("dp-noise-std", 0.0))
        if std > 0:
            rng = self._rng(config, purpose)
            noise = gaussian_noise([a.shape for a in clipped], std=std, rng=rng)
            clipped = [a + n for a, n in zip(clipped, noise, strict=True)]
        return clipped

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Rank the held-out items on the device: the test item (train and validation items
        excluded) and the validation item (train items excluded, ``valid_`` metrics). A
        ranker round's request (``ranker-step``) asks for the ranker's metrics on the
        device's own offered list instead (:meth:`_ranker_evaluate`).

        Under record-level DP the state re-fitted for ranking is not stored: the stored
        factor, which the next DP-SGD step starts from, comes from DP-SGD alone."""
        self._verify(parameters, config)
        if config.get(RANKER_STEP_KEY) is True:  # the ranker's weights: its list metrics
            return self._ranker_evaluate(parameters)
        if not self.data.evaluable:
            return 0.0, 0, {}
        model = self._model(config)
        train = UserItems.single(self.data.train_items, n_items=self.data.n_items)
        scores, states = model.scores_and_states(
            parameters, self._inputs(self.data.train_items, config, 1)
        )
        if RecordDP.from_config(config) is None and states[0] is not None:
            self._keep(states[0])
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
    devices: VirtualDevices,
    *,
    seed: int,
    held_out: Callable[[int], HeldOut] | None = None,
) -> Callable[[Context], Client]:
    """A ``client_fn`` for the virtual device ``partition-id`` of ``devices``; it accepts
    only global models signed with the key the devices pin. ``held_out`` gives a device's
    held-out items (``None``: the device does not evaluate)."""

    def client_fn(context: Context) -> Client:
        torch.set_num_threads(1)
        row = int(context.node_config["partition-id"])
        with devices.open(row) as device:
            items, catalog = device.history_indices(), device.catalog
            contexts, times = device.history_contexts(), device.history_times()
        if catalog is None:
            raise RuntimeError(f"{devices.path(row)}: no release installed; provision it first")
        held = held_out(row) if held_out is not None else HeldOut(-1, -1, np.zeros(0, np.int64))
        data = DeviceData(
            items, held.valid_item, held.test_item, held.negatives, catalog, contexts, times
        )

        def ranking_example() -> tuple[np.ndarray, np.ndarray] | None:
            with devices.open(row) as device:
                return device.ranking_example()

        client = MFClient(
            data,
            context.state,
            seed=seed,
            row=row,
            release_key=devices.release_key,
            ranking_example=ranking_example,
        )
        return client.to_client()

    return client_fn


def build_client_app(
    devices: VirtualDevices,
    *,
    seed: int,
    secure_aggregation: bool,
    held_out: Callable[[int], HeldOut] | None = None,
    outer_mods: Sequence[Mod] = (),
) -> ClientApp:
    """The ClientApp for the virtual ``devices``; with ``secure_aggregation`` every update
    goes through Flower's SecAgg+ mod before it leaves the device. ``outer_mods`` wrap
    everything (they see exactly what the device sends; tests audit with them)."""
    mods = [*outer_mods, *([secaggplus_mod] if secure_aggregation else [])]
    client_fn = make_client_fn(devices, seed=seed, held_out=held_out)
    return ClientApp(client_fn=client_fn, mods=mods)
