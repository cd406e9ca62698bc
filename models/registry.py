"""One model interface for every layer, and the registry that names its implementations.

A :class:`RecModel` says, for one model family, everything the rest of Stamen needs:

- the **shared arrays** (trained federatedly, averaged by the strategy, shipped in
  releases): their names and seeded initial values for a catalogue;
- the **private state** a device keeps between rounds (MF's user factor; nothing for the
  two-tower model, whose user tower reads the history itself) — it never leaves a device;
- the **device step**, batch-first: ``device_updates`` takes any number of devices and
  returns one dense update of the shared arrays per device (the ClientApp calls it with
  one device, the batched simulation with a cohort chunk);
- **scoring** of the whole catalogue for a batch of users from their histories, and
  **serving** on a device: the item side computed once per release, the user vector on
  every event.

Models register under a name with :func:`register_model`; :func:`model_class` looks one
up (``--model mf|two-tower``, the ``model`` key of ``flwr run`` configs and of release
bundles), importing only the module of the family asked for (serving an ``mf`` release
does not load the two-tower model). Imports no other Stamen package and never ``flwr``;
torch only where a family's own module does.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from stamen.errors import ConfigError
from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.quantize import ItemTable

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_MODELS",
    "MODELS",
    "DeviceInputs",
    "DeviceUpdates",
    "RecModel",
    "Serving",
    "build_model",
    "device_seeds",
    "model_class",
    "register_model",
]


@dataclass(frozen=True)
class DeviceInputs:
    """What a batch of devices holds: row ``d`` of ``history`` is device ``d``'s items in
    time order (with their event contexts where known); ``attributes`` ``(devices, width)``
    are on-device user attributes (``None``: none); ``states`` each device's private state
    from its last round (``None``: fresh); ``seeds`` a per-device seed for the step's
    randomness (so a device's step does not depend on which other devices share its
    batch); ``query`` ``(devices, 2)`` the context of the request being scored (``None``:
    unknown; ``stamen.models.two_tower.context``); ``round`` the round being trained (1
    for the first; 0: none given), for steps that follow a schedule over rounds (FedRAP's)."""

    history: UserItems
    seeds: np.ndarray
    attributes: np.ndarray | None = None
    states: tuple[np.ndarray | None, ...] | None = None
    query: np.ndarray | None = None
    round: int = 0

    def __post_init__(self) -> None:
        n = self.history.n_users
        if len(self.seeds) != n:
            raise ValueError(f"{len(self.seeds)} seeds for {n} devices")
        if self.attributes is not None and len(self.attributes) != n:
            raise ValueError(f"{len(self.attributes)} attribute rows for {n} devices")
        if self.states is not None and len(self.states) != n:
            raise ValueError(f"{len(self.states)} states for {n} devices")
        if self.query is not None and np.shape(self.query) != (n, 2):
            raise ValueError(f"query contexts must be ({n}, 2), got {np.shape(self.query)}")

    @property
    def n_devices(self) -> int:
        """Number of devices in the batch."""
        return self.history.n_users

    def state(self, device: int) -> np.ndarray | None:
        """Device ``device``'s private state (``None``: fresh)."""
        return None if self.states is None else self.states[device]

    def select(self, rows: np.ndarray) -> DeviceInputs:
        """The devices ``rows``, in that order."""
        rows = np.asarray(rows, np.int64)
        return DeviceInputs(
            history=self.history.select(rows),
            seeds=np.asarray(self.seeds)[rows],
            attributes=None if self.attributes is None else self.attributes[rows],
            states=None if self.states is None else tuple(self.states[r] for r in rows),
            query=None if self.query is None else self.query[rows],
            round=self.round,
        )


@dataclass(frozen=True)
class Serving:
    """A release as a device serves it: ``table`` (one row per item) and ``bias``, scored
    as ``table · (v + c) + bias`` against the vector ``v = user(items, previous)`` of the
    person's items (catalogue rows in time order; ``previous``: the last vector, for warm
    starts) and, for models that read it, the request's context term ``c = context(row)``
    (``stamen.models.two_tower.context``; ``None``: the model reads no context)."""

    table: ItemTable
    bias: np.ndarray
    user: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    context: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class DeviceUpdates:
    """A batch of device steps: ``deltas[k][d]`` is device ``d``'s update of shared array
    ``k``; ``states[d]`` its new private state; ``losses[d]`` its training loss. Only the
    deltas (and, where the run allows, the loss) may leave a device."""

    deltas: list[np.ndarray]
    states: tuple[np.ndarray | None, ...]
    losses: np.ndarray

    def device(self, d: int) -> list[np.ndarray]:
        """Device ``d``'s update, one array per shared array."""
        return [delta[d] for delta in self.deltas]


class RecModel(ABC):
    """A model family (see module docstring). Instances are cheap and hold no weights:
    the shared arrays are passed in and out as numpy arrays."""

    #: Registry name (``--model``), set by :func:`register_model`.
    name: ClassVar[str] = ""
    #: How tables and plots name the model ("MF", "two-tower").
    display_name: ClassVar[str] = ""
    #: The settings class of the device step (sent with every round): a frozen pydantic
    #: model, or a ``stamen.dataclass_settings.DataclassSettings`` (MF's, which a device
    #: serving a release builds without loading pydantic); both offer ``model_validate``,
    #: ``model_dump`` and ``model_fields``.
    settings_class: ClassVar[type[Any]]
    #: The field of the run's settings (``SimulationConfig``, ``ServerSettings``) that
    #: holds this family's settings.
    settings_field: ClassVar[str]
    #: The per-coordinate range an honest device's update needs under SecAgg+ without
    #: user-level DP (``None``: SecAgg+'s default, ``stamen.privacy.UNCLIPPED_RANGE``); a
    #: run's ``secagg.clipping_range``, when unset, is derived from it
    #: (``stamen.server.rounds.secagg_range``).
    update_range: ClassVar[float | None] = None
    #: The server optimiser the model's published configuration uses (``[optimizer]``
    #: fields), taken when a run names no ``optimizer`` (``None``: the run's default).
    server_optimizer: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, settings: Any, catalog: ReleaseCatalog) -> None:
        if not isinstance(settings, self.settings_class):
            raise TypeError(
                f"{self.name} takes {self.settings_class.__name__}, got {type(settings).__name__}"
            )
        self.settings = settings
        self.catalog = catalog
        self.n_items = len(catalog)

    @classmethod
    def settings_from(cls, values: Mapping[str, Any]) -> Any:
        """This family's settings from ``values``, which may hold other keys too (a
        release's or a round's settings: the family's own are taken, validated)."""
        fields = cls.settings_class.model_fields
        return cls.settings_class.model_validate({k: v for k, v in values.items() if k in fields})

    @abstractmethod
    def shared_names(self) -> tuple[str, ...]:
        """Names of the shared arrays, in upload order."""

    @abstractmethod
    def init_shared(self, seed: int) -> list[np.ndarray]:
        """Seeded initial shared arrays (float32), in ``shared_names`` order."""

    @abstractmethod
    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """One local step on each device of the batch (see module docstring)."""

    @abstractmethod
    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """Scores ``(devices, n_items)`` of every catalogue item for each device from its
        history (and attributes); callers mask what must be excluded."""

    def scores_and_states(
        self, shared: list[np.ndarray], devices: DeviceInputs
    ) -> tuple[torch.Tensor, tuple[np.ndarray | None, ...]]:
        """:meth:`scores` and each device's private state as scoring re-fitted it
        (``None``: the model keeps none)."""
        return self.scores(shared, devices), (None,) * devices.n_devices

    @abstractmethod
    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """What a device serves from one release: the item side scored against a user
        vector, computed once per release. ``table(name)`` gives a shared array as the
        release stores it (int8 or float32), where the model can use that directly.
        ``cache`` holds small arrays a model derived from this same release before (a
        device keeps them in its store, so that reopening it does not derive them
        again): the model reads what it finds there and adds what it derives."""

    def popularity(self, shared: list[np.ndarray]) -> np.ndarray:
        """A score per item for the no-history fallback (the learned item bias)."""
        return self.serving(shared).bias

    def quantizable(self) -> tuple[str, ...]:
        """Shared arrays with one row per item that a release may store as int8."""
        return ()

    def for_serving(self) -> RecModel:
        """The model as offline scoring of a whole population should run it (MF re-fits
        user factors from scratch with more steps than a warm device does)."""
        return self

    def shared_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the shared arrays, in ``shared_names`` order (by default those of
        ``init_shared``; a family whose initialisation needs torch says them directly, so
        that a device checking a release does not load it)."""
        return [tuple(a.shape) for a in self.init_shared(0)]

    def check_shared(self, shared: list[np.ndarray]) -> None:
        """Raise ``ValueError`` unless ``shared`` has this model's names and shapes."""
        expected = self.shared_shapes()
        names = self.shared_names()
        if len(shared) != len(names):
            raise ValueError(f"{self.name}: expected {len(names)} shared arrays, got {len(shared)}")
        for name, array, shape in zip(names, shared, expected, strict=True):
            if tuple(np.shape(array)) != tuple(shape):
                raise ValueError(f"{self.name}: {name} has shape {np.shape(array)}, not {shape}")


def device_seeds(devices: np.ndarray, *, seed: int, rnd: int, purpose: int) -> np.ndarray:
    """The seed of each device's randomness in round ``rnd`` for ``purpose`` (0: training,
    1: evaluation on the device, 2: offline scoring): a function of the run's seed and the
    device's own id only, so a device draws the same whether it runs alone (the ClientApp)
    or inside a batch (the batched simulation)."""
    return np.array(
        [
            np.random.SeedSequence([seed, int(d), rnd, purpose]).generate_state(1)[0]
            for d in np.asarray(devices).ravel()
        ],
        np.uint64,
    )


#: Registered model families by name.
MODELS: dict[str, type[RecModel]] = {}
#: The built-in families and the module that registers each (imported on first lookup).
BUILTIN_MODELS = {
    "mf": "stamen.models.mf.model",
    "two-tower": "stamen.models.two_tower.model",
    "sequential": "stamen.models.sequential.model",
    "pfedrec": "stamen.models.pfedrec.model",
    "fedrap": "stamen.models.fedrap.model",
}


def register_model(name: str) -> Callable[[type[RecModel]], type[RecModel]]:
    """Class decorator registering a :class:`RecModel` under ``name``."""

    def decorate(cls: type[RecModel]) -> type[RecModel]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.name = name
        MODELS[name] = cls
        return cls

    return decorate


def model_class(name: str) -> type[RecModel]:
    """The registered model family ``name`` (a built-in one is imported on first use)."""
    if name not in MODELS and name in BUILTIN_MODELS:
        _load_builtin(name)
    try:
        return MODELS[name]
    except KeyError:
        known = sorted(set(MODELS) | set(BUILTIN_MODELS))
        raise ValueError(f"unknown model {name!r}; choose one of {known}") from None


def build_model(name: str, settings: Any, catalog: ReleaseCatalog) -> RecModel:
    """An instance of model ``name``; ``settings`` may be its settings object or a plain
    mapping validated into one (unknown keys are an error)."""
    cls = model_class(name)
    return cls(cls.settings_class.model_validate(settings), catalog)


def _load_builtin(name: str) -> None:
    """Import the built-in family ``name`` so that it registers itself.

    Raises:
        ConfigError: the family needs torch and torch is not installed (a device-only
            install, ``requirements-device.txt``, serves ``mf`` releases without it).
    """
    try:
        importlib.import_module(BUILTIN_MODELS[name])
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        raise ConfigError(
            f"model {name!r} needs torch, which is not installed here (a device-only "
            "install serves 'mf' releases; pip install torch==2.13.0 for the others)"
        ) from None
