"""The embedded device on one core: recommend latency, memory, record and release costs.

    python benchmarks/device.py --sizes 1682 100000 1000000
    python benchmarks/device.py --sizes 1682 --models sequential --out /tmp/device-check

For each catalogue size (1,682 is MovieLens-100K's; the others synthetic: ``Title <i>``
titles, one to three of 19 genres, a release year and a first-seen time per item), each
item table as the release stores it (float32, int8 with a per-row scale) and each model
family of ``--models`` (default both, side by side on the same catalogue):

- ``mf``: an ``ials`` release of 64-dimensional Gaussian item factors and biases;
- ``sequential`` (``stamen.models.sequential``, ``SequentialSettings()``: 64 wide, two
  transformer blocks, the last 50 items, content features on): the seeded initial
  weights (``init_shared``) moved by small Gaussian steps, as a trained release is; its
  int8 form stores the item-id embedding as int8, and the device serves the item
  embeddings it computes from it (id embedding + content MLP), float32,

it builds a signed release and, in a fresh child process pinned to one thread (so the
resident memory is the device's own; ``--timeout`` seconds at most, a child that does not
finish or fails is recorded as such, with why, in the results), measures:

- ``Device.open`` of a new folder, ``apply_release`` (verify the Ed25519 signature,
  decode, copy the file durably, build what the model serves: the iALS Gram for MF; the
  catalogue's content features and every item's embedding through the content MLP for
  the sequential model), that build alone (the model's construction, then its
  ``serving``), a reopen of the device with the release installed (its file in the page
  cache, as after the apply: the device maps it and reads the model's derived state from
  its store) and the first ``recommend(10)`` after that reopen;
- ``record`` of a new item (a durable SQLCipher commit, then the user-state update: MF's
  exact iALS re-solve of the user factor, the sequential model's user vector recomputed
  through the transformer from the last ``max_history`` items), ``record`` of an item
  already in the history (it moves to the end of the sequence: the commit and the
  update again), and the user-state update alone
  (``Serving.user(rows, None)``) for the person's first ``--history`` items and for the
  whole history at the end of the run;
- ``recommend(10)`` p50 and p99 for a person with ``--history`` items through the whole
  on-device pipeline (``PipelineSettings()``: every candidate generator, rank fusion,
  the rules, MMR), and through collaborative filtering alone
  (``PipelineSettings.retrieval_only()``), against a floor:
  the served item table's bytes over this core's read bandwidth from a working set of
  the table's size (``numpy`` sum, best of 5: tables that fit the last-level cache are
  read from it), against main memory (a 2 GiB working set) for reference, and a bare
  ``numpy`` matvec + ``argpartition``;
- resident memory (RSS) after the release is installed, and the release file's size;
- with ``--item-index``, all of it for releases that carry an approximate item index
  (``stamen.models.item_index``: collaborative filtering through the index, its
  candidates re-scored exactly; the model column says ``(approximate)``);

and the ratio sequential ÷ MF of record, the user-state update, recommend, apply_release,
RSS and release size at each size and table.

Writes ``--out``/device[-<name>].{json,md} (default benchmarks/results).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from stamen.models.bundle import ReleaseBundle

HERE = Path(__file__).resolve().parent
DIM = 64
MODELS = ("mf", "sequential")
TABLES = ("float32", "int8")


def _stem(args: argparse.Namespace) -> str:
    return "device" + (f"-{args.name}" if args.name else "")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def read_bandwidth(nbytes: int) -> float:
    """Bytes per second one core reads from a ``nbytes`` working set, read over and over
    (as ``recommend`` reads its table): ``numpy`` sum of a float32 array, best of 5."""
    data = np.ones(max(nbytes, 1 << 20) // 4, np.float32)
    data.sum()
    best = min(_timed(lambda: data.sum(), 5))
    return data.nbytes / best


def _genres(rng: np.random.Generator, size: int) -> list[tuple[str, ...]]:
    """One to three of 19 genres per item (MovieLens has 19)."""
    names = [f"genre-{g}" for g in range(19)]
    counts = rng.integers(1, 4, size)
    drawn = rng.random((size, 19)).argsort(axis=1)[:, :3]  # three distinct, uniformly
    return [tuple(names[g] for g in row[:c]) for row, c in zip(drawn, counts, strict=True)]


def release(
    model: str,
    size: int,
    quantized: bool,
    item_index: bool = False,
    *,
    keys: tuple[bytes, bytes] | None = None,
) -> tuple[bytes, bytes, list[str], dict]:
    """The signed bytes of release 1 of ``model`` for a synthetic catalogue of ``size``
    items (the catalogue, popularity and trending counts the same for every model), its
    public key, the item ids and the release's model settings; with ``item_index``, the
    release carries an approximate item index of what the device serves
    (``stamen.models.item_index``, built on one thread). ``keys``: the signing key pair
    (``generate_signing_key``: private, public) to sign with, default a fresh one."""
    import gc

    from stamen.models.bundle import ReleaseBundle, ReleaseCatalog
    from stamen.models.registry import build_model
    from stamen.privacy import generate_signing_key, seal_signed

    rng = np.random.default_rng(size)
    ids = [f"item-{i}" for i in range(size)]
    catalog = ReleaseCatalog.build(
        ids,
        titles=[f"Title {i}" for i in range(size)],
        genres=_genres(rng, size),
        year=rng.integers(1920, 2025, size),
        first_seen=rng.integers(1_600_000_000, 1_700_000_000, size),
    )
    popularity = rng.random(size).astype(np.float32)
    trending = rng.poisson(2.0, size).astype(np.float32)
    moves = np.random.default_rng([size, 1])
    if model == "mf":
        settings: dict = {"loss": "ials", "dim": DIM, "alpha": 1.0, "l2": 10.0}
        built = build_model(model, settings, catalog)
        shared = [
            moves.normal(0.0, 0.1, shape).astype(np.float32) for shape in built.shared_shapes()
        ]
    else:
        built = build_model(model, {}, catalog)
        settings = built.settings.model_dump()
        shared = [
            (a + moves.normal(0.0, 0.01, a.shape)).astype(np.float32) for a in built.init_shared(0)
        ]
    names, quantizable = built.shared_names(), built.quantizable()
    index = None
    if item_index:
        from stamen.models.item_index import ApproximateIndex

        served = built.serving(shared)
        index = ApproximateIndex.build(served.table, served.bias, threads=1).to_bytes()
        del served
    del built  # the sequential model holds the catalogue's content features
    gc.collect()
    bundle = ReleaseBundle(
        release=1,
        model=model,
        settings=settings,
        arrays=dict(zip(names, shared, strict=True)),
        catalog=catalog,
        popularity=popularity,
        trending=trending,
        item_index=index,
    )
    private, public = keys or generate_signing_key()
    signed = seal_signed(
        bundle.encode(quantize=quantizable if quantized else ()), private_key=private
    )
    return signed, public, ids, settings


def build_alone(bundle: ReleaseBundle) -> dict[str, float]:
    """What ``apply_release`` builds for the model of ``bundle``, alone: the model (the
    sequential model's content features), then its serving state (MF's Gram, the
    sequential model's item embeddings through the content MLP), in milliseconds."""
    from stamen.models.registry import model_class

    cls = model_class(bundle.model)
    fields = cls.settings_class.model_fields
    settings = cls.settings_class.model_validate(
        {k: v for k, v in bundle.settings.items() if k in fields}
    )
    started = time.perf_counter()
    model = cls(settings, bundle.catalog)
    built_model = time.perf_counter()
    model.serving(bundle.shared_arrays(), bundle.table)
    return {
        "build_model_ms": (built_model - started) * 1e3,
        "build_serving_ms": (time.perf_counter() - built_model) * 1e3,
    }


def one(
    model: str, size: int, quantized: bool, history: int, repeats: int, item_index: bool = False
) -> dict:
    """Every measurement for one model and catalogue (run in a child process)."""
    import gc

    import psutil
    import torch

    torch.set_num_threads(1)
    from stamen.client import Device, PipelineSettings
    from stamen.client.device.events import Event
    from stamen.client.device.store import EventStore
    from stamen.privacy import generate_key

    signed, public, ids, settings = release(model, size, quantized, item_index)
    rng = np.random.default_rng([size, 2])
    picks = rng.choice(size, history + repeats, replace=False)
    out: dict = {
        "model": model,
        "items": size,
        "table": "int8" if quantized else "float32",
        "settings": settings,
    }
    with tempfile.TemporaryDirectory() as tmp:
        release_path = Path(tmp) / "release-000001.stamen"
        release_path.write_bytes(signed)
        out["bundle_bytes"] = len(signed)
        del signed
        gc.collect()
        key, folder = generate_key(), Path(tmp) / "device"
        rss_before = psutil.Process().memory_info().rss

        started = time.perf_counter()
        device = Device.open(folder, key=key, release_key=public)
        out["open_new_ms"] = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        device.apply_release(release_path)
        out["apply_release_ms"] = (time.perf_counter() - started) * 1e3
        assert device.release is not None
        out["retrieval"] = device.release.retrieval
        device.record_many({"item": ids[i], "kind": "play"} for i in picks[:history])
        first_rows = device.history_indices()

        out["recommend"] = _percentiles(_timed(lambda: device.recommend(10), repeats))
        assert len(device.recommend(10)) == 10
        device.pipeline = PipelineSettings.retrieval_only()
        out["recommend_retrieval"] = _percentiles(_timed(lambda: device.recommend(10), repeats))
        device.pipeline = PipelineSettings()
        new_items = iter(picks[history:])
        out["record_new_item"] = _percentiles(
            _timed(lambda: device.record(ids[next(new_items)], "play"), repeats)
        )
        out["record_seen_item"] = _percentiles(
            _timed(lambda: device.record(ids[picks[0]], "play"), repeats)
        )
        out["rss_mib"] = psutil.Process().memory_info().rss / 2**20
        out["rss_growth_mib"] = (psutil.Process().memory_info().rss - rss_before) / 2**20
        serving = device._serving
        assert serving is not None
        last_rows = device.history_indices()
        out["history_at_update"] = len(first_rows)
        out["user_update"] = _percentiles(_timed(lambda: serving.factor(first_rows, None), repeats))
        out["history_at_end"] = len(last_rows)
        out["user_update_end"] = _percentiles(
            _timed(lambda: serving.factor(last_rows, None), repeats)
        )

        table = serving.table
        user = device.user_factor
        out["table_bytes"] = table.nbytes

        def bare() -> None:
            scores = table.scores(user[None])[0]
            np.argpartition(-scores, 10)[:10]

        out["bare_matvec_argpartition"] = _percentiles(_timed(bare, repeats))

        out |= build_alone(serving.bundle)
        serving = table = None  # device.close() lets the release go
        device.close()
        gc.collect()

        started = time.perf_counter()
        device = Device.open(folder, key=key)
        out["reopen_ms"] = (time.perf_counter() - started) * 1e3
        assert device.release is not None
        started = time.perf_counter()
        device.recommend(10)
        out["first_recommend_after_reopen_ms"] = (time.perf_counter() - started) * 1e3
        device.close()

        (Path(tmp) / "store").mkdir()
        store = EventStore(Path(tmp) / "store", key=generate_key())
        event = Event(item="x", kind="play", value=1.0, at=time.time(), context={})
        out["store_commit"] = _percentiles(_timed(lambda: store.append([event]), repeats))
        store.close()
    return out


def measure(model: str, size: int, table: str, args: argparse.Namespace) -> dict:
    """``one`` in a fresh child process; a child that fails or runs past ``--timeout``
    gives a row that says so (``error``)."""
    row: dict = {"model": model, "items": size, "table": table}
    started = time.perf_counter()
    try:
        child = subprocess.run(
            [sys.executable, __file__, "--one", model, str(size), table]
            + ["--history", str(args.history), "--repeats", str(args.repeats)]
            + (["--item-index"] if args.item_index else []),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        row["error"] = f"did not finish within --timeout {args.timeout:.0f} s"
        return row
    row["child_s"] = time.perf_counter() - started
    sys.stderr.write(child.stderr)
    if child.returncode != 0:
        tail = (child.stderr.strip().splitlines() or [""])[-1]
        how = (
            f"killed by signal {-child.returncode}"
            + (" (out of memory?)" if child.returncode == -9 else "")
            if child.returncode < 0
            else f"exit status {child.returncode}"
        )
        row["error"] = f"failed after {row['child_s']:.0f} s: {how}" + (f": {tail}" if tail else "")
        return row
    row |= json.loads(child.stdout.strip().splitlines()[-1])
    row["read_bandwidth_bytes_per_s"] = read_bandwidth(row["table_bytes"])
    row["floor_ms"] = row["table_bytes"] / row["read_bandwidth_bytes_per_s"] * 1e3
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--history", type=int, default=50, help="the person's items")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds one child (row) may run"
    )
    parser.add_argument(
        "--item-index",
        action="store_true",
        help="releases carry an approximate item index (stamen.models.item_index)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="", help="suffix of the results files")
    parser.add_argument(
        "--one", nargs=3, metavar=("MODEL", "SIZE", "TABLE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one:
        model, size, table = args.one
        quantized = table == "int8"
        measured = one(model, int(size), quantized, args.history, args.repeats, args.item_index)
        print(json.dumps(measured))
        return
    bandwidth = read_bandwidth(2 << 30)
    print(f"single-core read bandwidth, 2 GiB working set: {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for size in args.sizes:
        for table in args.tables:
            for model in args.models:
                row = measure(model, size, table, args)
                rows.append(row)
                name = f"{size:>9,} items {table:>7} {model:>10}"
                if "error" in row:
                    print(f"{name}: {row['error']}", flush=True)
                else:
                    print(
                        f"{name}: recommend p50 {row['recommend']['p50_ms']:.2f} "
                        f"p99 {row['recommend']['p99_ms']:.2f} ms "
                        f"(floor {row['floor_ms']:.2f} ms), "
                        f"record {row['record_new_item']['p50_ms']:.2f} ms, "
                        f"user update {row['user_update']['p50_ms']:.2f} ms, "
                        f"apply {row['apply_release_ms']:.0f} ms, "
                        f"RSS {row['rss_mib']:.0f} MiB, "
                        f"release {row['bundle_bytes'] / 1e6:.1f} MB "
                        f"({row['child_s']:.0f} s)",
                        flush=True,
                    )
                write(args, rows, argv, bandwidth)


def write(args: argparse.Namespace, rows: list[dict], argv: list[str], bandwidth: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/device.py", *argv])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    (args.out / f"{_stem(args)}.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "read_bandwidth_2gib_bytes_per_s": bandwidth,
                "history": args.history,
                "repeats": args.repeats,
                "timeout_s": args.timeout,
                "dim": DIM,
                "models": args.models,
                "rows": rows,
            },
            indent=2,
        )
    )

    def ms(row: dict, name: str) -> str:
        return f"{row[name]['p50_ms']:.2f} / {row[name]['p99_ms']:.2f}"

    def head(row: dict) -> str:
        approximate = " (approximate)" if row.get("retrieval") == "approximate" else ""
        return f"| {row['items']:,} | {row['table']} | {row['model']}{approximate} |"

    def failed(row: dict, columns: int) -> str:
        return f"{head(row)} {row['error']} |" + " |" * (columns - 4)

    lines = [
        "# The embedded device on one core",
        "",
        f"Command: `{command}` ({machine}; every figure single-threaded, in a fresh process"
        f" per row; {DIM}-dimensional factors and embeddings; a person with {args.history}"
        f" items; {args.repeats} calls per latency). `table` is how the release stores its"
        " per-item table; the sequential model serves the float32 item embeddings it"
        " computes from it either way (table (MB) is what `recommend` reads). The floor"
        " is that table's bytes over one core's read bandwidth from a working set of the"
        " table's size (numpy sum, best of 5; a table that fits the last-level cache is"
        " read from it, as repeated calls do). From main memory (2 GiB working set) one"
        f" core reads {bandwidth / 1e9:.1f} GB/s.",
        "",
        "| items | table | model | recommend, pipeline p50 / p99 (ms) |"
        " recommend, retrieval only p50 / p99 (ms) | table (MB) | read (GB/s) |"
        " floor (ms) | retrieval p50 ÷ floor | bare matvec + argpartition p50 / p99 (ms) |"
        " RSS (MiB) | release file (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(failed(r, 12))
            continue
        lines.append(
            f"{head(r)} {ms(r, 'recommend')} | {ms(r, 'recommend_retrieval')} | "
            f"{r['table_bytes'] / 1e6:.1f} | {r['read_bandwidth_bytes_per_s'] / 1e9:.1f} | "
            f"{r['floor_ms']:.3g} | {r['recommend_retrieval']['p50_ms'] / r['floor_ms']:.1f}× | "
            f"{ms(r, 'bare_matvec_argpartition')} | {r['rss_mib']:.0f} | "
            f"{r['bundle_bytes'] / 1e6:.1f} |"
        )
    done = [r for r in rows if "error" not in r]
    first = done[0]["history_at_update"] if done else args.history
    end = max((r["history_at_end"] for r in done), default=args.history + args.repeats)
    lines += [
        "",
        "| items | table | model | record, new item p50 / p99 (ms) | record, seen item (ms) |"
        f" user-state update alone, {first} items (ms) |"
        f" user-state update alone, {end} items (ms) | store commit alone (ms) |"
        " open new (ms) | apply_release (ms) | of which model (ms) |"
        " of which serving (ms) | reopen with release (ms) | first recommend after it (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(failed(r, 14))
            continue
        lines.append(
            f"{head(r)} {ms(r, 'record_new_item')} | {ms(r, 'record_seen_item')} | "
            f"{ms(r, 'user_update')} | {ms(r, 'user_update_end')} | {ms(r, 'store_commit')} | "
            f"{r['open_new_ms']:.0f} | {r['apply_release_ms']:.0f} | "
            f"{r['build_model_ms']:.0f} | {r['build_serving_ms']:.0f} | {r['reopen_ms']:.0f} | "
            f"{r.get('first_recommend_after_reopen_ms', float('nan')):.0f} |"
        )
    pairs = [
        (mf, seq)
        for mf in done
        for seq in done
        if mf["model"] == "mf"
        and seq["model"] == "sequential"
        and (mf["items"], mf["table"]) == (seq["items"], seq["table"])
    ]
    if pairs:

        def ratio(mf: dict, seq: dict, name: str) -> str:
            return f"{seq[name]['p50_ms'] / mf[name]['p50_ms']:.1f}×"

        lines += [
            "",
            "Sequential ÷ MF, same catalogue and table (p50 for latencies):",
            "",
            "| items | table | record, new item | user-state update alone |"
            " recommend, pipeline | recommend, retrieval only | apply_release | RSS |"
            " release file |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mf, seq in pairs:
            lines.append(
                f"| {mf['items']:,} | {mf['table']} | {ratio(mf, seq, 'record_new_item')} | "
                f"{ratio(mf, seq, 'user_update')} | {ratio(mf, seq, 'recommend')} | "
                f"{ratio(mf, seq, 'recommend_retrieval')} | "
                f"{seq['apply_release_ms'] / mf['apply_release_ms']:.1f}× | "
                f"{seq['rss_mib'] / mf['rss_mib']:.1f}× | "
                f"{seq['bundle_bytes'] / mf['bundle_bytes']:.1f}× |"
            )
    lines += [
        "",
        "A new item's `record` commits the event (WAL, `synchronous=FULL`: an fsync) and then"
        " updates the user state: MF re-solves the user factor exactly (iALS), the"
        " sequential model recomputes the user vector through its transformer from the"
        " person's last `max_history` items. An item already in the history moves to the"
        " end of the person's sequence, so its `record` updates the user state too. The"
        " user-state update alone is"
        " `Serving.user(rows, None)` for the person's first items and for the whole history"
        " at the end of the run (the sequential model reads its last `max_history` of them)."
        " apply_release builds the model (the sequential model: the catalogue's content"
        " features) and then its serving state (MF: the iALS Gram; the sequential model:"
        " every item's embedding through the content MLP); those two columns time that"
        " build alone, again, after the run.",
    ]
    if len(done) < len(rows):
        lines += [
            "",
            "Rows that did not finish say why in place of their figures"
            f" (each row's child process may run {args.timeout:.0f} s, `--timeout`).",
        ]
    (args.out / f"{_stem(args)}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
