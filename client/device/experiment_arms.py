"""A/B experiments on a device: the release's experiments, the device's own secret, the arm
it serves and what it contributes to a measurement (a part of ``Device``; the definitions,
assignment and contributions are in ``stamen.client.device.experiments``).

A release carries its experiments in its manifest (``extras["experiments"]``: a list of
``Experiment.to_json()``), signed with the rest of it. The device assigns itself to an arm
of each by HMAC under a secret of its own: 32 random bytes made the first time an
experiment asks for it and kept in the encrypted store (never sent, never exported, gone
with :meth:`Device.forget`). ``recommend`` serves the pipeline settings of every arm the
device is in, applied in the release's order over the app's own settings; the impression
log (``Device.log_shown``) and the events are what a measurement counts, and the installed
release's item genres give the diversity guardrail's lists their genres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from stamen.client.device.core import DeviceCore

if TYPE_CHECKING:  # loaded where a release carries experiments (pydantic models)
    import numpy as np

    from stamen.client.device.experiments import Experiment, ItemGenres
    from stamen.models.experiments import MetricBounds

__all__ = ["ExperimentsMixin"]


class ExperimentsMixin(DeviceCore):
    """The installed release's experiments on this device (see module docstring)."""

    def experiments(self) -> tuple[Experiment, ...]:
        """The installed release's experiments (none without a release)."""
        with self._lock:
            self._open_store()
            return () if self._serving is None else self._serving.experiments

    def experiment_arms(self) -> dict[str, str]:
        """The arm this device serves in each of the installed release's experiments, by
        experiment id (computed here; nothing is sent)."""
        with self._lock:
            self._open_store()
            if self._serving is None or not self._serving.experiments:
                return {}
            from stamen.client.device.experiments import assign

            secret = self._experiment_secret()
            return {
                e.id: e.arms[assign(e, device_secret=secret)].name
                for e in self._serving.experiments
            }

    def experiment_contribution(
        self,
        experiment: str,
        *,
        start: float,
        end: float,
        bounds: MetricBounds | None = None,
        pre_start: float | None = None,
    ) -> np.ndarray | None:
        """What this device contributes to a measurement of ``experiment`` (an id of the
        installed release's) over ``[start, end)``: its arm's block of clipped metrics,
        zeros elsewhere (``stamen.client.device.experiments.contribution``); with
        ``pre_start``, the same metrics over the pre-period ``[pre_start, start)`` as
        covariates (CUPED's layout); the experiment's guardrails too, the diversity of each
        shown list from the installed release's item genres; ``None`` when the installed
        release does not carry the
        experiment (the device is not in it). Computed here; only a secure, noised sum of it
        ever leaves.

        Raises:
            ValueError: ``end`` is not after ``start``, or ``pre_start`` not before it.
        """
        if not end > start:
            raise ValueError(f"the window must end after it starts (start {start}, end {end})")
        with self._lock:
            store = self._open_store()
            known = {} if self._serving is None else {e.id: e for e in self._serving.experiments}
            found = known.get(experiment)
            if found is None:
                return None
            from stamen.client.device.experiments import contribution

            return contribution(
                found,
                device_secret=self._experiment_secret(),
                events=store.events(),
                impressions=store.impressions(),
                start=start,
                end=end,
                bounds=bounds,
                pre_start=pre_start,
                rating_threshold=self.rating_threshold,
                genres=self._item_genres() if "diversity" in found.metrics else None,
            )

    def _item_genres(self) -> ItemGenres:
        """The installed release's genre ids of items (empty for an item not in its
        catalogue), under the lock."""
        import numpy as np

        serving = self._serving
        assert serving is not None
        catalog, genres = serving.bundle.catalog, serving.index.genres

        def lookup(items: Sequence[str]) -> list[np.ndarray]:
            rows = catalog.index_of(list(items))
            return [genres.row(int(r)) if r >= 0 else np.zeros(0, np.int64) for r in rows]

        return lookup
