"""Private ALS on Flower, strategy driven directly: the settings it fixes and refuses, and
each release's noise share (its rounds on Flower's simulation engine:
``tests/integration/test_als_rounds.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from helpers.private_als import ALS, als_config
from helpers.static_clients import StaticClients

from stamen.models import ConfigError
from stamen.models.als.layout import als_sensitivity
from stamen.privacy import SecAggSettings, UserDP
from stamen.server.als import ALSSettings, release_noise
from stamen.server.als_strategy import FederatedALS, als_clipping_range, als_server_settings
from stamen.server.settings import ServerSettings


def _settings(**overrides) -> ServerSettings:
    base = ServerSettings(secagg=SecAggSettings(enabled=False), **overrides)
    return als_server_settings(base, ALSSettings(**ALS), devices=20)


def test_private_als_settings_fix_rounds_cohort_and_the_device_solve(tmp_path) -> None:
    from_config = als_config(tmp_path).server_settings(12)
    assert from_config.rounds == ALS["rounds"] + 1 and from_config.clients_per_round == 12
    settings = _settings()
    assert settings.rounds == ALS["rounds"] + 1 and settings.clients_per_round == 20
    assert settings.local.loss == "ials" and settings.local.dim == ALS["dim"]


def test_private_als_refuses_what_it_cannot_honour() -> None:
    als = ALSSettings(**ALS)
    initial = FederatedALS.initial(50, als, seed=0)
    with pytest.raises(ValueError, match="cohort = population"):
        FederatedALS(_settings(), als, initial=initial, population=25)
    wrong_rounds = _settings().model_copy(update={"rounds": 7})
    with pytest.raises(ValueError, match="rounds"):
        FederatedALS(wrong_rounds, als, initial=initial, population=20)
    tight = ServerSettings(
        secagg=SecAggSettings(clipping_range=1.5),
        dp=UserDP(mode="distributed", noise_multiplier=1.0),
    )
    sized = als_server_settings(tight, als, devices=20)  # raised to fit the statistics
    expected = als_clipping_range(sized, als, noise_multiplier=1.0, devices=20)
    assert sized.secagg.clipping_range == pytest.approx(expected) and expected > 2.0
    FederatedALS(sized, als, initial=initial, population=20)
    unsized = sized.model_copy(update={"secagg": tight.secagg})
    with pytest.raises(ValueError, match="would clip"):
        FederatedALS(unsized, als, initial=initial, population=20)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"resume": True}, "not resumed"), ({"record_dp": {"enabled": True}}, "record-level")],
)
def test_private_als_config_refuses_resume_and_record_dp(tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        als_config(tmp_path, **overrides)


@pytest.mark.parametrize("share", [None, 0.7])
def test_distributed_noise_shares_follow_each_release_sensitivity(share) -> None:
    als = ALSSettings(**ALS, count_share=share)
    z_counts, z_statistics = release_noise(1.5, als)
    if share is None:  # the equal split: every release at the accountant's multiplier
        assert z_counts == pytest.approx(1.5) and z_statistics == pytest.approx(1.5)
    base = ServerSettings(dp=UserDP(mode="distributed", noise_multiplier=1.5))
    settings = als_server_settings(base, als, devices=20)
    initial = FederatedALS.initial(50, als, seed=0)
    strategy = FederatedALS(settings, als, initial=initial, population=20)
    params = ndarrays_to_parameters(initial)
    counts_round = strategy.configure_fit(1, params, StaticClients(20))
    assert len(counts_round) == 20  # every device, whatever the Poisson draw would say
    config = counts_round[0][1].config
    assert config["task"] == "als-counts" and config["dp-clip-norm"] == 1.0
    assert config["dp-noise-std"] == pytest.approx(z_counts / math.sqrt(20))
    strategy.head = np.arange(10)  # as the counts round would have set it
    config = strategy.configure_fit(2, params, StaticClients(20))[0][1].config
    sensitivity = als_sensitivity(user_clip=als.user_clip, cap=als.cap, item_grams=False)
    assert config["task"] == "als-statistics" and config["dp-clip-norm"] == sensitivity
    assert config["dp-noise-std"] == pytest.approx(z_statistics * sensitivity / math.sqrt(20))
    assert np.frombuffer(config["als-head"], np.int64).tolist() == list(range(10))
