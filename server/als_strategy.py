"""Private ALS as a Flower server algorithm, next to DP-FedAvg (``FederatedAveraging``).

Round 1 sums every device's item counts (``stamen.client.flower.statistics.item_counts``);
rounds 2 … ``als.rounds + 1`` every device's ALS statistics for the current item side.
Each sum goes through SecAgg+ (or plain aggregation) and gets Gaussian noise of standard
deviation ``z × sensitivity`` (central: added by the server; distributed: each of the
``n`` devices adds a share ``z × sensitivity / sqrt(n)``), ``z`` the count release's or the
statistics releases' multiplier (``stamen.server.als.release_noise``: ``als.count_share``
splits one budget between them). The server picks the head items
from the noisy counts and solves the item side (``stamen.server.als``). Every device takes
part in every round (sampling rate 1), so the ``als.rounds + 1`` releases compose through
Opacus' RDP accountant as full-batch Gaussian mechanisms. The arithmetic is the one
``stamen.simulation.baselines.private_als`` simulates
(``tests/integration/test_als_rounds.py`` checks the two agree).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy.aggregate import aggregate

from stamen.models.als.layout import ALSLayout, als_sensitivity
from stamen.models.wire import DeviceDP, Request, Task
from stamen.privacy import GaussianSum
from stamen.server.als import (
    ALSSettings,
    choose_head,
    initial_item_side,
    release_noise,
    solve_item_side,
)
from stamen.server.flower_types import AggregatedFit, FitFailures, FitResults
from stamen.server.rounds import PrivacySpent
from stamen.server.settings import ServerSettings
from stamen.server.strategy import MASKED_VALUE_BYTES, FederatedAveraging, failure_reasons

__all__ = ["FederatedALS", "als_clipping_range", "als_server_settings"]


def als_server_settings(base: ServerSettings, als: ALSSettings, *, devices: int) -> ServerSettings:
    """``base`` with what private ALS fixes: ``als.rounds + 1`` rounds, every device in
    every round, the devices' exact ``ials`` solve in ``als.dim`` dimensions, and a SecAgg+
    clipping range raised, where needed, to cover the statistics and noise shares
    (:func:`als_clipping_range`)."""
    local = base.local.model_copy(
        update={"loss": "ials", "dim": als.dim, "alpha": als.alpha, "l2": als.user_l2}
    )
    settings = base.model_copy(
        update={"rounds": als.rounds + 1, "clients_per_round": devices, "local": local}
    )
    z = 0.0
    if settings.dp.enabled:
        z = settings.dp.resolve(
            population=devices, cohort=devices, rounds=settings.rounds
        ).noise_multiplier
    needed = als_clipping_range(settings, als, noise_multiplier=z, devices=devices)
    current = settings.secagg.clipping_range
    if settings.secagg.enabled and (current is None or current < needed):
        secagg = settings.secagg.model_copy(update={"clipping_range": needed})
        settings = settings.model_copy(update={"secagg": secagg})
    return settings


def als_clipping_range(
    settings: ServerSettings, als: ALSSettings, *, noise_multiplier: float, devices: int
) -> float:
    """The SecAgg+ clipping range private ALS needs: a statistic reaches ``user_clip² +
    1`` (a count 1), plus, under distributed DP, seven standard deviations of a device's
    largest noise share ``z Δ / sqrt(n)`` (counts: ``z_c × 1``, statistics: ``z_s Δ``;
    ``noise_multiplier`` is the equal-split ``z`` of :func:`release_noise`)."""
    share = 0.0
    if settings.dp.noise_on_devices:
        sensitivity = als_sensitivity(
            user_clip=als.user_clip, cap=als.cap, item_grams=als.item_grams
        )
        z_counts, z_statistics = release_noise(noise_multiplier, als)
        share = max(z_counts, z_statistics * sensitivity) / math.sqrt(devices)
    return als.user_clip**2 + 1.0 + 7 * share


class FederatedALS(FederatedAveraging):
    """Private ALS (module docstring). ``settings`` must come from
    :func:`als_server_settings`; the other arguments are ``FederatedAveraging``'s."""

    #: ``als_server_settings`` sizes the clipping range for the statistics.
    own_secagg_range = True

    def __init__(self, settings: ServerSettings, als: ALSSettings, **kwargs: Any) -> None:
        population = kwargs.get("population")
        if population is None or settings.clients_per_round != population:
            raise ValueError("private ALS takes every device in every round: cohort = population")
        if settings.rounds != als.rounds + 1:
            raise ValueError(f"private ALS runs als.rounds + 1 = {als.rounds + 1} rounds")
        if settings.record_dp.enabled:
            raise ValueError("private ALS has no record-level DP-SGD step")
        if kwargs.get("resume") is not None:
            raise ValueError("private ALS runs are not resumed (their rounds are few)")
        n_items = len(kwargs["initial"][1])
        super().__init__(settings, **kwargs)
        self.als = als
        self.n_items = n_items
        self.counts: np.ndarray | None = None
        self.head: np.ndarray | None = None
        base = self.plan.mechanism
        z = 0.0 if base is None else base.noise_multiplier
        # the accountant records rounds + 1 releases at z; release_noise splits that budget
        self.noise_multiplier = z
        self._release_noise = release_noise(z, als)
        #: Each stage's Gaussian-sum mechanism (one accountant), ``None`` without DP.
        self.mechanisms: dict[str, GaussianSum] | None = None
        if base is not None:
            self.mechanisms = {
                stage: type(base)(
                    noise_multiplier=stage_z,
                    sensitivity=self._stage_sensitivity(stage),
                    accountant=base.accountant,
                    streams=base.streams,
                )
                for stage, stage_z in zip(
                    ("counts", "statistics"), self._release_noise, strict=True
                )
            }
        self._check_range(population)
        # every device is in every round; the noise shares' room is _check_range's concern
        self.plan.min_cohort = settings.secagg.num_shares if settings.secagg.enabled else 1

    @classmethod
    def initial(cls, n_items: int, als: ALSSettings, *, seed: int) -> list[np.ndarray]:
        """The public start of the item side."""
        return initial_item_side(n_items, als, seed=seed)

    def __repr__(self) -> str:
        return f"FederatedALS(rounds={self.als.rounds}, dim={self.als.dim})"

    def _stage(self, rnd: int) -> str:
        return "counts" if rnd == 1 else "statistics"

    def _sensitivity(self, rnd: int) -> float:
        return self._stage_sensitivity(self._stage(rnd))

    def _stage_sensitivity(self, stage: str) -> float:
        if stage == "counts":
            return 1.0
        return als_sensitivity(
            user_clip=self.als.user_clip, cap=self.als.cap, item_grams=self.als.item_grams
        )

    def _sigma(self, rnd: int) -> float:
        """The standard deviation of round ``rnd``'s noise on the sum."""
        z_counts, z_statistics = self._release_noise
        z = z_counts if self._stage(rnd) == "counts" else z_statistics
        return z * self._sensitivity(rnd)

    def _check_range(self, devices: int) -> None:
        """Refuse a SecAgg+ clipping range that would clip statistics or noise shares."""
        secagg = self.settings.secagg
        needed = als_clipping_range(
            self.settings, self.als, noise_multiplier=self.noise_multiplier, devices=devices
        )
        if secagg.enabled and secagg.clipping_range is not None and secagg.clipping_range < needed:
            raise ValueError(
                f"secagg.clipping_range ({secagg.clipping_range:g}) would clip private ALS "
                f"statistics or noise shares; set it to at least {needed:.3g}"
            )

    def request(self, rnd: int, cohort: int | None = None) -> Request:
        """The request of round ``rnd``'s stage: counts, or the statistics over the head."""
        base = super().request(rnd, cohort)
        settings = dict(base.settings)
        task = Task.ALS_COUNTS if self._stage(rnd) == "counts" else Task.ALS_STATISTICS
        if task is Task.ALS_STATISTICS:
            assert self.head is not None
            settings.update(
                {
                    "als-head": self.head.astype(np.int64).tobytes(),
                    "als-item-grams": self.als.item_grams,
                    "als-alpha": self.als.alpha,
                    "als-user-l2": self.als.user_l2,
                    "als-user-clip": self.als.user_clip,
                    "als-cap": self.als.cap,
                }
            )
        dp = base.dp
        if self.mechanisms is not None:
            mechanism = self.mechanisms[self._stage(rnd)]
            share = mechanism.share_std(cohort or self.settings.clients_per_round)
            dp = DeviceDP(mechanism.sensitivity, share)
        return base.with_(task=task, settings=settings, dp=dp)

    def aggregate_fit(
        self, server_round: int, results: FitResults, failures: FitFailures
    ) -> AggregatedFit:
        """Sum the devices' vectors, add the noise, then take the head from the counts or
        solve the item side from the statistics; checkpoint and publish."""
        rnd = self._global_round(server_round)
        if not results:
            reasons = "; ".join(failure_reasons(failures)) or "no reason given"
            raise RuntimeError(
                f"round {rnd}: no device returned its private ALS statistics "
                f"({len(failures)} failures: {reasons})"
            )
        results = self.in_device_order(results)
        updates = [(parameters_to_ndarrays(r.parameters), r.num_examples) for _, r in results]
        total = np.asarray(aggregate(updates)[0], np.float64) * len(results)
        sigma = self._sigma(rnd)
        if self.mechanisms is not None:
            mechanism = self.mechanisms[self._stage(rnd)]
            total = mechanism.release_sum(total, rnd=rnd)
            self._record.privacy = PrivacySpent.of(mechanism)
        if self._stage(rnd) == "counts":
            self.counts = total
            self.head = choose_head(total, self.als)
        else:
            assert self.head is not None
            layout = ALSLayout(dim=self.als.dim, head=self.head, item_grams=self.als.item_grams)
            items, bias = solve_item_side(
                total,
                layout,
                n_items=self.n_items,
                alpha=self.als.alpha,
                l2=self.als.item_l2 + self.als.noise_l2 * sigma,
                counts=self.counts,
            )
            self.server.assign([items, bias])
        per_value = MASKED_VALUE_BYTES if self.settings.secagg.enabled else total.itemsize
        record = self._record
        record.stage = self._stage(rnd)
        record.devices = len(results)
        record.failures = len(failures)
        record.upload_bytes_per_device = int(per_value * total.size)
        if failures:
            record.failure_reasons = failure_reasons(failures)
        return ndarrays_to_parameters(self.server.arrays()), {}
