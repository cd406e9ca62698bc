"""The MF device step (``stamen.models.mf.local.local_update``): a dense update of the
shared arrays, seeded, with the user factor kept on the device."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.updates import mf_shared

from stamen.models import LocalSettings
from stamen.models.mf.local import local_update


@pytest.mark.parametrize("loss", ["ials", "softmax", "bpr"])
def test_local_update_is_dense_and_keeps_the_user_factor_local(loss: str) -> None:
    shared = mf_shared(40, 4)
    settings = LocalSettings(dim=4, loss=loss, refresh_steps=3)
    result = local_update(
        shared, None, items=np.array([1, 5, 7]), settings=settings, rng=np.random.default_rng(0)
    )
    assert [d.shape for d in result.delta] == [s.shape for s in shared]
    assert all(d.dtype == np.float32 for d in result.delta)
    assert np.abs(result.delta[0][[1, 5, 7]]).sum() > 0
    assert result.user_factor.shape == (4,)
    assert set(result.metrics) == {"train_loss"}
    again = local_update(
        shared, None, items=np.array([1, 5, 7]), settings=settings, rng=np.random.default_rng(0)
    )
    assert all(np.array_equal(a, b) for a, b in zip(result.delta, again.delta, strict=True))
