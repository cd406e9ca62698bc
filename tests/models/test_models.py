"""Contract tests over the model, losses and the one training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamen.models import LOSSES, MatrixFactorization, UserItems, fit, refresh_users


def _data(n_users: int = 30, n_items: int = 60, seed: int = 0) -> UserItems:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 8)
    items = np.concatenate(
        [
            rng.choice(n_items // 2, 8, replace=False) + (u % 2) * (n_items // 2)
            for u in range(n_users)
        ]
    )
    return UserItems.from_pairs(users, items, n_users=n_users, n_items=n_items)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_training_loop_reduces_every_loss(loss: str) -> None:
    data = _data()
    model = MatrixFactorization(
        data.n_users, data.n_items, 8, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    history = fit(
        model, data, loss=loss, optimizer=opt, epochs=30, batch_size=8, rng=np.random.default_rng(0)
    )
    assert history[-1] < 0.7 * history[0]


def test_training_is_reproducible_from_the_seed() -> None:
    data = _data()
    out = []
    for _ in range(2):
        model = MatrixFactorization(
            data.n_users, data.n_items, 8, generator=torch.Generator().manual_seed(3)
        )
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        fit(
            model,
            data,
            loss="bpr",
            optimizer=opt,
            epochs=3,
            batch_size=8,
            rng=np.random.default_rng(5),
        )
        out.append(model.items.weight.detach().clone())
    assert torch.equal(out[0], out[1])


def test_batched_refresh_moves_each_user_as_if_alone() -> None:
    data = _data(n_users=6)
    base = MatrixFactorization(6, data.n_items, 8, generator=torch.Generator().manual_seed(1))
    batched = MatrixFactorization(6, data.n_items, 8)
    batched.load_state_dict(base.state_dict())
    refresh_users(
        batched,
        data,
        loss="softmax",
        steps=10,
        lr=0.1,
        weight_decay=0.0,
        rng=np.random.default_rng(0),
    )
    for u in range(6):
        alone = MatrixFactorization(1, data.n_items, 8)
        alone.load_shared_arrays(base.shared_arrays())
        with torch.no_grad():
            alone.users.weight[0] = base.users.weight[u]
        refresh_users(
            alone,
            data.select(np.array([u])),
            loss="softmax",
            steps=10,
            lr=0.1,
            weight_decay=0.0,
            rng=np.random.default_rng(0),
        )
        assert torch.allclose(alone.users.weight[0], batched.users.weight[u], atol=1e-4)
    # and the item side stayed frozen
    assert torch.equal(batched.items.weight, base.items.weight)


def test_shared_arrays_round_trip_and_shape_check() -> None:
    a = MatrixFactorization(3, 20, 4, generator=torch.Generator().manual_seed(0))
    b = MatrixFactorization(1, 20, 4)
    b.load_shared_arrays(a.shared_arrays())
    assert all(
        np.array_equal(x, y) for x, y in zip(a.shared_arrays(), b.shared_arrays(), strict=True)
    )
    with pytest.raises(ValueError, match="expected shape"):
        b.load_shared_arrays([np.zeros((21, 4), np.float32), np.zeros(21, np.float32)])


def test_unknown_loss_is_named_in_the_error() -> None:
    data = _data()
    model = MatrixFactorization(data.n_users, data.n_items, 4)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fit(
            model,
            data,
            loss="hinge",
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            batch_size=4,
            rng=np.random.default_rng(0),
        )
