"""The contract every registered model keeps (``stamen.models.registry``), run over all
of them: shapes, determinism under a seed, shared arrays round-trip through a release,
the private state never in the upload, scoring that the exclusion masks apply to, and the
batch-first device step equal to the same step device by device (the ClientApp path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.updates import moved_shared

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models import ReleaseBundle, ReleaseCatalog, UserItems
from stamen.models.metrics import top_k
from stamen.models.registry import BUILTIN_MODELS, MODELS, DeviceInputs, build_model, model_class
from stamen.models.wire import DeviceDP, Request, Task
from stamen.server.rounds import RoundPlan
from stamen.server.settings import ServerSettings
from stamen.simulation.engines.batched import model_step, round_mean

N_ITEMS, N_DEVICES = 60, 7

#: (registry name, settings): every family, and the two-tower variants.
CASES = {
    "mf": ("mf", {"dim": 6}),
    "mf-bpr": ("mf", {"dim": 6, "loss": "bpr", "refresh_steps": 2}),
    "two-tower": ("two-tower", {"dim": 8, "hidden": 12, "negatives": 16}),
    "two-tower-sequence": (
        "two-tower",
        {"dim": 8, "hidden": 12, "user_tower": "sequence", "max_history": 6},
    ),
    "two-tower-context": (
        "two-tower",
        {"dim": 8, "hidden": 12, "negatives": 16, "context": True, "context_dropout": 0.3},
    ),
    "sequential": (
        "sequential",
        {"dim": 8, "hidden": 12, "max_history": 6, "negatives": 16, "local_epochs": 2},
    ),
    "sequential-windows": (
        "sequential",
        {"dim": 8, "hidden": 12, "max_history": 3, "negatives": 16, "train_windows": 3},
    ),
    "sequential-ids-full-softmax": (
        "sequential",
        {"dim": 8, "blocks": 1, "max_history": 4, "content": False, "negatives": 0, "dropout": 0},
    ),
    "two-tower-content-full-softmax": (
        "two-tower",
        {"dim": 8, "hidden": 12, "item_ids": False, "negatives": 0, "local_epochs": 2},
    ),
    "pfedrec": ("pfedrec", {"dim": 6, "batch_size": 8, "local_epochs": 2, "item_lr_scale": 0.1}),
    "fedrap": (
        "fedrap",
        {"dim": 6, "batch_size": 8, "local_epochs": 3, "item_lr": 2.0, "lam": 0.5, "mu": 0.1},
    ),
}


def test_every_registered_model_is_covered() -> None:
    for name in BUILTIN_MODELS:  # each built-in family loads on its first lookup
        model_class(name)
    assert {name for name, _ in CASES.values()} == set(MODELS)


def _catalog() -> ReleaseCatalog:
    genres = [["Drama"] if i % 3 else ["Comedy", "Drama"] for i in range(N_ITEMS)]
    return ReleaseCatalog.build(
        [f"m{i}" for i in range(N_ITEMS)],
        titles=[f"Film {i % 9} of the year ({1980 + i % 30})" for i in range(N_ITEMS)],
        genres=genres,
        year=[1980 + i % 30 for i in range(N_ITEMS)],
    )


def _devices(n: int = N_DEVICES, seed: int = 0) -> DeviceInputs:
    rng = np.random.default_rng(seed)
    rows = [rng.choice(N_ITEMS, size=int(rng.integers(1, 12)), replace=False) for _ in range(n)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    # each event's (hour, weekday), some unknown; models that read no context ignore them
    contexts = np.stack([rng.integers(0, 25, indptr[-1]), rng.integers(0, 8, indptr[-1])], axis=1)
    history = UserItems(
        indptr=indptr, items=np.concatenate(rows), n_items=N_ITEMS, contexts=contexts
    )
    query = np.stack([rng.integers(0, 24, n), rng.integers(0, 7, n)], axis=1)
    return DeviceInputs(
        history=history, seeds=np.arange(100, 100 + n, dtype=np.uint64), query=query, round=3
    )


@pytest.fixture(params=list(CASES))
def model(request):
    name, settings = CASES[request.param]
    return build_model(name, settings, _catalog())


def test_shapes_of_shared_arrays_updates_and_scores(model) -> None:
    shared = model.init_shared(0)
    assert len(shared) == len(model.shared_names()) > 0
    assert all(a.dtype == np.float32 for a in shared)
    updates = model.device_updates(moved_shared(model, 0.05), _devices())
    assert [d.shape for d in updates.deltas] == [(N_DEVICES, *a.shape) for a in shared]
    assert updates.losses.shape == (N_DEVICES,) and np.isfinite(updates.losses).all()
    assert all(np.isfinite(d).all() for d in updates.deltas)
    assert any(np.abs(d).max() > 0 for d in updates.deltas)
    scores = model.scores(moved_shared(model, 0.05), _devices())
    assert scores.shape == (N_DEVICES, N_ITEMS) and torch.isfinite(scores).all()


def test_determinism_under_a_seed(model) -> None:
    a, b, c = model.init_shared(3), model.init_shared(3), model.init_shared(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    first = model.device_updates(moved_shared(model, 0.05), _devices())
    again = model.device_updates(moved_shared(model, 0.05), _devices())
    for x, y in zip(first.deltas, again.deltas, strict=True):
        np.testing.assert_array_equal(x, y)


def test_shared_arrays_round_trip_through_a_release(model) -> None:
    shared = moved_shared(model, 0.05)
    bundle = ReleaseBundle(
        release=1,
        model=model.name,
        settings=model.settings.model_dump(),
        arrays=dict(zip(model.shared_names(), shared, strict=True)),
        catalog=model.catalog,
        popularity=model.popularity(shared),
    )
    back = ReleaseBundle.decode(bundle.encode())
    rebuilt = build_model(back.model, back.settings, back.catalog)
    assert rebuilt.shared_names() == model.shared_names()
    for x, y in zip(back.shared_arrays(), shared, strict=True):
        np.testing.assert_array_equal(x, y)
    torch.testing.assert_close(
        rebuilt.scores(back.shared_arrays(), _devices()), model.scores(shared, _devices())
    )
    with pytest.raises(ValueError, match="shape"):
        model.check_shared([a[..., :1] if a.ndim else a for a in shared])


def test_the_upload_holds_the_shared_arrays_only(model) -> None:
    """Through the ClientApp: the reply is one array per shared array, of its full shape
    (every item row, touched or not), and the private state (MF's user factor) stays in
    the node's state."""
    shared = moved_shared(model, 0.05)
    state: dict = {}
    items = np.array([3, 7, 8, 20])
    data = DeviceData(items, model.catalog)
    client = DeviceClient(data, state, seed=0, row=2)  # type: ignore[arg-type]
    settings = {"model": model.name, **model.settings.to_config()}
    config = Request(task=Task.MODEL, round=1, settings=settings).to_config()
    upload, _, _ = client.fit(shared, config)
    assert [u.shape for u in upload] == [a.shape for a in shared]
    kept = [v.to_numpy_ndarrays()[0] for v in state.values()]
    for private in kept:
        assert not any(u.shape == private.shape and np.allclose(u, private) for u in upload)
    # MF's user factor; PFedRec's score function [w, b]; FedRAP's [D_u, w, b]
    dim = getattr(model.settings, "dim", 0)
    widths = {"mf": dim, "pfedrec": dim + 1, "fedrap": N_ITEMS * dim + dim + 1}
    if model.name in widths:
        assert len(kept) == 1 and kept[0].shape == (widths[model.name],)
    else:
        assert kept == []  # the user tower or sequence reads the history itself


def test_scores_rank_under_the_exclusion_masks(model) -> None:
    """The model scores every item; callers exclude the history, and nothing excluded
    comes back."""
    devices = _devices()
    scores = model.scores(moved_shared(model, 0.05), devices)
    ids, _ = top_k(scores, 10, exclude=devices.history)
    for d in range(devices.n_devices):
        assert not set(ids[d].tolist()) & set(devices.history.row(d).tolist())


def test_batch_first_step_equals_the_step_device_by_device(model) -> None:
    shared, devices = moved_shared(model, 0.05), _devices()
    together = model.device_updates(shared, devices)
    for d in range(devices.n_devices):
        alone = model.device_updates(shared, devices.select(np.array([d])))
        scale = max(float(np.abs(y).max()) for y in alone.deltas)
        for x, y in zip(together.deltas, alone.deltas, strict=True):
            np.testing.assert_allclose(x[d], y[0], atol=2e-5 * scale)


@pytest.mark.parametrize(
    "case",
    [
        "mf",
        "two-tower",
        "two-tower-sequence",
        "two-tower-context",
        "sequential",
        "pfedrec",
        "fedrap",
    ],
)
def test_batched_round_mean_equals_the_clients_mean(case) -> None:
    """``simulation/batched.py`` and the per-device ClientApp agree: the cohort mean the
    batched simulation computes (chunked, clipped under DP) is the mean of what each
    device's ``fit`` uploads, device ids and round seeding included."""
    name, overrides = CASES[case]
    model = build_model(name, overrides, _catalog())
    field = model_class(name).settings_field
    settings = ServerSettings(
        model=name,
        clients_per_round=N_DEVICES,
        secagg={"enabled": False},
        dp={"mode": "central", "noise_multiplier": 0.0, "clip_norm": 0.05},
        **{field: overrides},
    )
    shared, devices = moved_shared(model, 0.05), _devices()
    users = np.arange(10, 10 + N_DEVICES)
    rnd = 3
    step = model_step(model, devices.history, users, seed=settings.seed)
    mean = round_mean(step, shared, users, RoundPlan(settings, population=50), rnd)
    config = Request(
        task=Task.MODEL, round=rnd, settings=settings.device_config(), dp=DeviceDP(0.05, 0.0)
    ).to_config()
    uploads = []
    for d, user in enumerate(users):
        data = DeviceData(
            devices.history.row(d),
            model.catalog,
            devices.history.select(np.array([d])).contexts,
        )
        client = DeviceClient(data, {}, seed=settings.seed, row=int(user))  # type: ignore[arg-type]
        uploads.append(client.fit(shared, config)[0])
    for k, got in enumerate(mean):
        want = np.mean([u[k] for u in uploads], axis=0)
        np.testing.assert_allclose(got, want, atol=1e-6 + 1e-4 * float(np.abs(want).max()))
