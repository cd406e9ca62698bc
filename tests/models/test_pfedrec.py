"""PFedRec's device step against a slow reference written as the published code trains a
client (``engine.py``, ``fed_train_single_batch``: per batch, an SGD step of the score
function, then one of the item embedding with the updated score function), its sampled
negatives, and the private score function kept between rounds by the ClientApp and by the
batched engine."""

from __future__ import annotations

import numpy as np
import torch
from helpers.kept_state import two_rounds

from stamen.models import ReleaseCatalog, UserItems
from stamen.models.pfedrec.model import fresh_score_function, training_examples
from stamen.models.registry import DeviceInputs, build_model
from stamen.simulation.engines.batched import model_step

N_ITEMS, DIM = 12, 4
SETTINGS = {
    "dim": DIM,
    "batch_size": 4,
    "local_epochs": 2,
    "negatives": 2,
    "item_lr_scale": 0.5,
    "weight_decay": 0.01,
}


def _model():
    catalog = ReleaseCatalog.build([f"m{i}" for i in range(N_ITEMS)], titles=[""] * N_ITEMS)
    return build_model("pfedrec", SETTINGS, catalog)


def _reference_step(table, state, items, seed):
    """One device's step, slowly: an embedding and a linear layer, two SGD optimisers, the
    examples drawn as the device draws them."""
    model = _model()
    s = model.settings
    rng = np.random.default_rng(seed)
    start = fresh_score_function(DIM, rng) if state is None else state
    examples, labels = training_examples(items, n_items=N_ITEMS, negatives=s.negatives, rng=rng)
    embedding = torch.nn.Embedding(N_ITEMS, DIM)
    score = torch.nn.Linear(DIM, 1)
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(table))
        score.weight.copy_(torch.from_numpy(start[:DIM])[None])
        score.bias.copy_(torch.from_numpy(start[DIM:]))
    opt_score = torch.optim.SGD(score.parameters(), lr=s.local_lr, weight_decay=s.weight_decay)
    opt_items = torch.optim.SGD(
        embedding.parameters(), lr=s.item_lr(N_ITEMS), weight_decay=s.weight_decay
    )
    losses = []
    for _ in range(s.local_epochs):
        order = rng.permutation(len(examples))
        for begin in range(0, len(order), s.batch_size):
            batch = order[begin : begin + s.batch_size]
            it, y = torch.from_numpy(examples[batch]), torch.from_numpy(labels[batch])
            for optimizer in (opt_score, opt_items):
                optimizer.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    score(embedding(it))[:, 0], y
                )
                loss.backward()
                optimizer.step()
            losses += [float(loss.detach())] * len(batch)
    new_state = torch.cat([score.weight[0], score.bias]).detach().numpy()
    return embedding.weight.detach().numpy() - table, new_state, float(np.mean(losses))


def test_the_step_equals_the_slow_reference() -> None:
    model = _model()
    table = model.init_shared(1)[0]
    rows = [np.array([0, 3, 5, 7, 9]), np.array([2]), np.array([1, 4, 6, 8, 10, 11, 0])]
    states = (None, np.linspace(-0.3, 0.3, DIM + 1).astype(np.float32), None)
    history = UserItems(
        indptr=np.cumsum([0] + [len(r) for r in rows]), items=np.concatenate(rows), n_items=N_ITEMS
    )
    seeds = np.array([11, 12, 13], np.uint64)
    updates = model.device_updates(
        [table], DeviceInputs(history=history, seeds=seeds, states=states)
    )
    for d, items in enumerate(rows):
        delta, state, loss = _reference_step(table, states[d], items, int(seeds[d]))
        np.testing.assert_allclose(updates.deltas[0][d], delta, atol=1e-5)
        np.testing.assert_allclose(updates.states[d], state, atol=1e-6)
        assert abs(updates.losses[d] - loss) < 1e-6
        assert np.abs(delta).max() > 0.01  # the step moves the table


def test_negatives_are_items_the_device_has_not_seen() -> None:
    items = np.array([0, 2, 4, 6])
    examples, labels = training_examples(
        items, n_items=N_ITEMS, negatives=4, rng=np.random.default_rng(0)
    )
    assert len(examples) == 5 * len(items) and labels.sum() == len(items)
    assert set(examples[labels == 1].tolist()) == set(items.tolist())
    assert not set(examples[labels == 0].tolist()) & set(items.tolist())


def test_the_score_function_stays_on_the_device_between_rounds() -> None:
    """Through the ClientApp: round 2 starts from the score function round 1 kept (not a
    fresh one), and no upload holds it."""
    model = _model()
    run = two_rounds(model)
    uploads, kept = run.uploads, run.kept
    assert kept[0].shape == (DIM + 1,) and not np.array_equal(kept[0], kept[1])
    assert not np.allclose(run.fresh[0], uploads[1][0])  # round 2 did not start fresh
    for upload in uploads:
        assert [u.shape for u in upload] == [(N_ITEMS, DIM)]


def test_the_batched_engine_keeps_each_devices_score_function() -> None:
    model = _model()
    shared = model.init_shared(0)
    history = UserItems.from_pairs(
        np.array([0, 0, 1, 1, 1]), np.array([1, 2, 3, 4, 5]), n_users=2, n_items=N_ITEMS
    )
    users = np.array([7, 9])
    states: dict = {}
    step = model_step(model, history, users, seed=0, states=states)
    step(shared, users[1:], 1)
    assert set(states) == {9} and states[9].shape == (DIM + 1,)
    first = states[9].copy()
    step(shared, users, 2)
    assert set(states) == {7, 9} and not np.array_equal(states[9], first)
