"""FedRAP's device step against a slow reference written as the published code trains a
client (``model/engine.py``, ``federatedTrainOneRound``: embeddings for the personal and
global item tables, a linear score function, one SGD optimiser over all three with a
per-batch ``ExponentialLR``, ``model/loss.py``'s loss, the ``tol`` stop), its curriculum
as the reference's engine sets it, scoring with the kept state, and the private state
kept between rounds by the ClientApp and by the batched engine, never uploaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.kept_state import two_rounds

from stamen.models import ReleaseCatalog, UserItems
from stamen.models.fedrap.model import fresh_state, split_state
from stamen.models.fedrap.settings import FedRAPSettings
from stamen.models.pfedrec.model import training_examples
from stamen.models.registry import DeviceInputs, build_model
from stamen.server.settings import ServerSettings
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.batched import model_step

N_ITEMS, DIM = 12, 4
SETTINGS = {
    "dim": DIM,
    "batch_size": 4,
    "local_epochs": 4,
    "tol": 0.5,
    "negatives": 2,
    "score_lr": 0.5,
    "item_lr": 3.0,
    "weight_decay": 0.01,
    "lam": 0.4,
    "mu": 0.2,
}


def _model(**overrides):
    catalog = ReleaseCatalog.build([f"m{i}" for i in range(N_ITEMS)], titles=[""] * N_ITEMS)
    return build_model("fedrap", SETTINGS | overrides, catalog)


def _history(rows: list[np.ndarray]) -> UserItems:
    return UserItems(
        indptr=np.cumsum([0] + [len(r) for r in rows]), items=np.concatenate(rows), n_items=N_ITEMS
    )


def _reference_step(common, state, items, seed, rnd):
    """One device's step, slowly. Returns the change of the global table, the new state,
    the running mean loss and the number of epochs run."""
    s = _model().settings
    rng = np.random.default_rng(seed)
    start = fresh_state(N_ITEMS, s) if state is None else state
    examples, labels = training_examples(items, n_items=N_ITEMS, negatives=s.negatives, rng=rng)
    personal_start, w_start, b_start = split_state(start, N_ITEMS, DIM)
    personal, commonality = torch.nn.Embedding(N_ITEMS, DIM), torch.nn.Embedding(N_ITEMS, DIM)
    score = torch.nn.Linear(DIM, 1)
    with torch.no_grad():
        personal.weight.copy_(torch.from_numpy(personal_start))
        commonality.weight.copy_(torch.from_numpy(common))
        score.weight.copy_(torch.from_numpy(w_start)[None])
        score.bias.copy_(torch.from_numpy(b_start))
    # the reference decays both rates by decay_rate after each round and sets λ, μ by tanh
    lr_network, lr_args = s.score_lr, s.item_lr
    lam = mu = 0.0
    for iteration in range(rnd - 1):
        lr_network, lr_args = lr_network * s.round_decay, lr_args * s.round_decay
        lam, mu = math.tanh(iteration / 10) * s.lam, math.tanh(iteration / 10) * s.mu
    optimizer = torch.optim.SGD(
        [
            {"params": score.parameters(), "lr": lr_network},
            {"params": personal.parameters(), "lr": lr_args},
            {"params": commonality.parameters(), "lr": lr_args},
        ],
        weight_decay=s.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=s.step_decay)
    loss_sum, count, running, epochs = 0.0, 0, [], 0
    for epoch in range(s.local_epochs):
        order = rng.permutation(len(examples))
        for begin in range(0, len(order), s.batch_size):
            batch = order[begin : begin + s.batch_size]
            it, y = torch.from_numpy(examples[batch]), torch.from_numpy(labels[batch])
            optimizer.zero_grad()
            d_rows, c_rows = personal(it), commonality(it)
            predictions = torch.sigmoid(score(d_rows + c_rows))[:, 0]
            loss = (
                torch.nn.BCELoss()(predictions, y)
                - lam * torch.nn.MSELoss()(d_rows, c_rows)
                + mu * torch.nn.L1Loss()(c_rows, torch.zeros_like(c_rows))
            )
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(batch)
            count += len(batch)
        running.append(loss_sum / count)
        epochs += 1
        if epoch > 0 and abs(running[-1] - running[-2]) / abs(running[-2]) < s.tol:
            break
    new_state = torch.cat([personal.weight.ravel(), score.weight[0], score.bias])
    delta = commonality.weight.detach().numpy() - common
    return delta, new_state.detach().numpy(), running[-1], epochs


def test_the_step_equals_the_slow_reference() -> None:
    model = _model()
    rnd = 7  # λ and μ grown, the rates decayed
    common = model.init_shared(1)[0]
    rows = [
        np.array([0, 3, 5, 7, 9]),
        np.array([2]),
        np.array([1, 4, 6, 8, 10, 11, 0]),
        np.array([5, 6]),
    ]
    kept = fresh_state(N_ITEMS, _model(init_seed=5).settings)  # as if trained before
    states = (None, kept, None, kept)
    seeds = np.array([11, 12, 13, 14], np.uint64)
    inputs = DeviceInputs(history=_history(rows), seeds=seeds, states=states, round=rnd)
    updates = model.device_updates([common], inputs)
    epochs = set()
    for d, items in enumerate(rows):
        delta, state, loss, ran = _reference_step(common, states[d], items, int(seeds[d]), rnd)
        epochs.add(ran)
        np.testing.assert_allclose(updates.deltas[0][d], delta, atol=1e-5)
        np.testing.assert_allclose(updates.states[d], state, atol=1e-5)
        assert abs(updates.losses[d] - loss) < 1e-5
        assert np.abs(delta).max() > 0.01  # the step moves the table
    assert min(epochs) < SETTINGS["local_epochs"] == max(epochs)  # some stopped by tol


def test_the_curriculum_and_rates_follow_the_reference_engine() -> None:
    """``weights(r)`` is what ``Engine.federatedTrainOneRound`` has set when round ``r``
    trains (``lam = 0`` at first, then ``tanh(iteration / 10) * lambda`` after each)."""
    settings = FedRAPSettings(lam=0.1, mu=1e-3)
    lam = mu = 0.0
    for iteration in range(40):
        assert settings.weights(iteration + 1) == pytest.approx((lam, mu), abs=0)
        assert settings.rates(iteration + 1) == pytest.approx(
            (1e-4 * 0.97**iteration, 1e3 * 0.97**iteration), rel=1e-12
        )
        lam, mu = math.tanh(iteration / 10) * 0.1, math.tanh(iteration / 10) * 1e-3
    assert settings.weights(1) == settings.weights(2) == (0.0, 0.0)
    assert settings.weights(40)[0] > 0.099  # tanh(3.8)
    fixed = FedRAPSettings(lam=0.1, mu=1e-3, curriculum="fixed")
    assert fixed.weights(1) == fixed.weights(30) == (0.1, 1e-3)
    with pytest.raises(ValueError, match="rounds count from 1"):
        settings.weights(0)


def test_the_step_needs_its_round() -> None:
    model = _model()
    inputs = DeviceInputs(history=_history([np.array([1, 2])]), seeds=np.array([1], np.uint64))
    with pytest.raises(ValueError, match="DeviceInputs.round must be 1 or more, got 0"):
        model.device_updates(model.init_shared(0), inputs)


def test_scoring_reads_the_kept_state_and_keeps_it() -> None:
    model = _model()
    common = model.init_shared(2)[0]
    kept = fresh_state(N_ITEMS, _model(init_seed=3).settings)  # as if trained before
    before = kept.copy()
    history = _history([np.array([1, 2]), np.array([3])])
    seeds = np.array([21, 22], np.uint64)
    scores = model.scores([common], DeviceInputs(history=history, seeds=seeds, states=(kept, None)))
    for d, state in enumerate((kept, fresh_state(N_ITEMS, model.settings))):
        personal, w, b = split_state(state, N_ITEMS, DIM)
        want = [float((common[i] + personal[i]) @ w + b[0]) for i in range(N_ITEMS)]
        np.testing.assert_allclose(scores[d].numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(kept, before)


def test_the_private_state_stays_on_the_device_between_rounds() -> None:
    """Through the ClientApp: round 2 starts from the state round 1 kept (not a fresh
    one), and the uploads are the global table's change alone."""
    model = _model()
    run = two_rounds(model)
    shared, uploads, kept = run.shared, run.uploads, run.kept
    assert kept[0].shape == (N_ITEMS * DIM + DIM + 1,) and not np.array_equal(kept[0], kept[1])
    assert not np.allclose(run.fresh[0], uploads[1][0])  # round 2 did not start fresh
    for upload, private in zip(uploads, kept, strict=True):
        assert [u.shape for u in upload] == [(N_ITEMS, DIM)]
        personal, w, _ = split_state(private, N_ITEMS, DIM)
        assert not np.allclose(upload[0], personal) and not np.allclose(upload[0], shared[0])


def test_the_batched_engine_keeps_each_devices_state() -> None:
    model = _model()
    shared = model.init_shared(0)
    history = UserItems.from_pairs(
        np.array([0, 0, 1, 1, 1]), np.array([1, 2, 3, 4, 5]), n_users=2, n_items=N_ITEMS
    )
    users = np.array([7, 9])
    states: dict = {}
    step = model_step(model, history, users, seed=0, states=states)
    step(shared, users[1:], 1)
    assert set(states) == {9} and states[9].shape == (N_ITEMS * DIM + DIM + 1,)
    first = states[9].copy()
    step(shared, users, 2)
    assert set(states) == {7, 9} and not np.array_equal(states[9], first)


def test_serving_scores_the_global_table_against_a_fitted_score_function() -> None:
    """A release holds ``C`` only: the served user vector is the ``w`` one step (round 1)
    from a fresh state on the person's history leaves."""
    model = _model()
    shared = model.init_shared(4)
    rows = np.array([2, 6, 9])
    serving = model.serving(shared)
    vector = serving.user(rows, None)
    inputs = DeviceInputs(
        history=UserItems.single(rows, n_items=N_ITEMS), seeds=np.array([3], np.uint64), round=1
    )
    _, w, _ = split_state(model.device_updates(shared, inputs).states[0], N_ITEMS, DIM)
    np.testing.assert_array_equal(vector, w)
    fresh = split_state(fresh_state(N_ITEMS, model.settings), N_ITEMS, DIM)
    assert not np.allclose(vector, fresh[1])  # the step moved it
    np.testing.assert_array_equal(serving.bias, np.zeros(N_ITEMS, np.float32))


def test_the_devices_starting_state_follows_the_runs_seed_unless_set() -> None:
    """A run that leaves ``fedrap.init_seed`` unset starts its devices from a state drawn
    with the run's seed (seeds vary it as they vary the shared arrays); one that sets it
    keeps it, in the server's settings too."""
    assert ServerSettings(model="fedrap", seed=5).fedrap.init_seed == 5
    chosen = SimulationConfig(model="fedrap", seed=5, fedrap={"init_seed": 7})
    assert chosen.fedrap.init_seed == 7
    assert chosen.server_settings(100).fedrap.init_seed == 7
    assert SimulationConfig(model="fedrap", seed=2).server_settings(100).fedrap.init_seed == 2
