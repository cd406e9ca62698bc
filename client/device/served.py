"""What an installed release serves on a device, held in memory only."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.client.pipeline.candidates import ReleaseIndex
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.errors import BundleError, ConfigError, IndexLibraryMissing
from stamen.models.bundle import ReleaseBundle
from stamen.models.item_index import ApproximateIndex
from stamen.models.registry import model_class
from stamen.models.two_tower.context import context_row

if TYPE_CHECKING:
    from stamen.client.device.experiments import CandidatePolicy, Experiment

_log = logging.getLogger("stamen.device")

__all__ = [
    "ReleaseInfo",
    "ServedRelease",
    "arm_settings",
    "release_candidates",
    "release_experiments",
]


def release_experiments(bundle: ReleaseBundle) -> tuple[Experiment, ...]:
    """The experiments a release carries (``stamen.models.experiments``), each validated in
    full against this device's pipeline settings.

    Raises:
        BundleError: one is not a valid experiment, or their ids repeat.
    """
    if not bundle.extras:
        return ()  # the experiments' models load only for a release with extras
    from stamen.client.device.experiments import Experiment
    from stamen.models.experiments import EXPERIMENTS_EXTRA, experiment_arms

    try:
        experiment_arms(bundle.extras)  # the shape the server reads, ids distinct
        raw = bundle.extras.get(EXPERIMENTS_EXTRA, [])
        found = []
        for k, item in enumerate(raw):
            try:
                found.append(Experiment.from_json(item))
            except ConfigError as error:
                raise ConfigError(f"extras.{EXPERIMENTS_EXTRA}.{k}: {error}") from None
    except ConfigError as error:
        raise BundleError(f"release {bundle.release}: {error}") from None
    return tuple(found)


def release_candidates(bundle: ReleaseBundle) -> tuple[CandidatePolicy, ...]:
    """The candidate policies a release carries for off-policy evaluation
    (``stamen.models.off_policy``), each validated in full against this device's pipeline
    settings.

    Raises:
        BundleError: one is not a valid candidate, or their names repeat.
    """
    if not bundle.extras:
        return ()
    from stamen.client.device.experiments import candidate_list
    from stamen.models.off_policy import CANDIDATES_EXTRA

    if CANDIDATES_EXTRA not in bundle.extras:
        return ()
    try:
        return candidate_list(bundle.extras[CANDIDATES_EXTRA])
    except ConfigError as error:
        raise BundleError(f"release {bundle.release}: extras.{CANDIDATES_EXTRA}: {error}") from None


def arm_settings(
    base: PipelineSettings, experiments: Sequence[Experiment], *, device_secret: bytes
) -> PipelineSettings:
    """``base`` with the overrides of the arm this device is in of each experiment, in
    order (a later experiment's override of the same field wins)."""
    from stamen.client.device.experiments import assign

    settings = base
    for experiment in experiments:
        arm = experiment.arms[assign(experiment, device_secret=device_secret)]
        if arm.overrides:
            settings = arm.settings(settings)
    return settings


@dataclass(frozen=True)
class ReleaseInfo:
    """What is installed: release number, model kind, catalogue size, int8 table or not,
    and how collaborative filtering retrieves: ``"exact"`` (every item scored) or
    ``"approximate"`` (the release's item index, ``stamen.models.item_index``). A release
    that carries an index served exactly (faiss is not installed) says
    ``"exact: <why>"``, as the device's log does."""

    number: int
    model: str
    items: int
    quantized: bool
    retrieval: str = "exact"


class ServedRelease:
    """What a device derives from an installed release (held in memory only): the serving
    state of the model named in the release (``stamen.models.registry``). ``cache``: the
    small arrays the model derived from this release before, read where present and
    filled where absent (``stamen.client.device.derived``)."""

    def __init__(
        self,
        bundle: ReleaseBundle,
        digest: bytes,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> None:
        self.bundle = bundle
        self.digest = digest
        cls = model_class(bundle.model)
        model = cls(
            cls.settings_from(bundle.settings), bundle.catalog
        )  # not kept: serving holds what it needs
        shared = bundle.shared_arrays()
        try:
            model.check_shared(shared)
        except ValueError as err:
            raise BundleError(f"release {bundle.release}: {err}") from None
        served = model.serving(shared, bundle.table, cache)
        self.table, self.bias, self._user = served.table, served.bias, served.user
        self._context = served.context
        # what the candidate generators read, indexed once per release
        self.index = ReleaseIndex(bundle.catalog, bundle.popularity, bundle.trending)
        self.ranker = None if bundle.ranker is None else list(bundle.ranker)
        #: The release's approximate item index, where it carries one and faiss is here.
        self.approximate: ApproximateIndex | None = None
        #: ``ReleaseInfo.retrieval``.
        self.retrieval = "exact"
        if bundle.item_index is not None:
            try:
                self.approximate = ApproximateIndex.from_bytes(
                    bundle.item_index, self.table, self.bias
                )
                self.retrieval = "approximate"
            except IndexLibraryMissing as error:
                self.retrieval = f"exact: the release's item index needs faiss ({error})"
                _log.warning("release %d: %s", bundle.release, self.retrieval)
            except ValueError as error:
                raise BundleError(f"release {bundle.release}: item index: {error}") from None
        #: The release's A/B experiments (``stamen.client.device.experiment_arms``).
        self.experiments = release_experiments(bundle)
        #: The release's candidate policies (``stamen.client.device.candidates``).
        self.candidates = release_candidates(bundle)

    @functools.cached_property
    def item_norms(self) -> np.ndarray:
        """The L2 norm of every item vector (computed on first use, a block at a time)."""
        table, block = self.table, 65536
        return np.concatenate(
            [
                np.linalg.norm(table.rows(np.arange(i, min(i + block, len(table)))), axis=1)
                for i in range(0, len(table), block)
            ]
            or [np.zeros(0)]
        )

    def request_vector(
        self, factor: np.ndarray, context: Mapping[str, Any] | None, at: float
    ) -> np.ndarray:
        """The user vector a request at time ``at`` scores with: ``factor`` plus the
        model's context term of the request (hour and weekday from ``context``, else the
        device's local clock), where the model reads context."""
        if self._context is None:
            return factor
        return factor + self._context(context_row(context, at=at))

    def factor(self, items: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
        """The user vector for ``items`` (rows in time order), ``None`` without any."""
        if not len(items):
            return None
        return self._user(items, previous)
