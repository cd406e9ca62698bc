"""The embedded device on one core: recommend latency, memory, record and release costs.

    python benchmarks/device.py --sizes 1682 100000 1000000

For each catalogue size (1,682 is MovieLens-100K's; the others synthetic) and each item
table (float32, int8 with a per-row scale) it builds a signed release of 64-dimensional
Gaussian item factors and, in a fresh child process pinned to one thread (so the resident
memory is the device's own), measures:

- ``Device.open`` of a new folder, ``apply_release`` (verify the Ed25519 signature,
  decode, copy the file durably, precompute the iALS Gram), and a reopen of the device
  with the release installed;
- ``record`` of a new item (a durable SQLCipher commit, then the exact iALS re-solve of
  the user factor), ``record`` of an item already in the history (the commit alone), and
  the re-solve alone (the release model's user solve for one person);
- ``recommend(10)`` p50 and p99 for a person with ``--history`` items through the whole
  on-device pipeline (``PipelineSettings()``: every candidate generator, rank fusion,
  the rules, MMR), and through collaborative filtering alone
  (``PipelineSettings.retrieval_only()``), against a floor:
  the item table's bytes over this core's read bandwidth from a working set of the
  table's size (``numpy`` sum, best of 5: tables that fit the last-level cache are read
  from it), against main memory (a 2 GiB working set) for reference, and a bare
  ``numpy`` matvec + ``argpartition``;
- resident memory (RSS) after the release is installed, and the release file's size.

Writes benchmarks/results/device.{json,md}.
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

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DIM = 64


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


def one(size: int, quantized: bool, history: int, repeats: int) -> dict:
    """Every measurement for one catalogue (run in a child process)."""
    import psutil
    import torch

    torch.set_num_threads(1)
    from stamen.client import Device, PipelineSettings
    from stamen.client.device.events import Event
    from stamen.client.device.store import EventStore
    from stamen.models.bundle import ReleaseBundle, ReleaseCatalog
    from stamen.privacy import generate_key, generate_signing_key, seal_signed

    rng = np.random.default_rng(size)
    ids = [f"item-{i}" for i in range(size)]
    bundle = ReleaseBundle(
        release=1,
        model="mf",
        settings={"loss": "ials", "dim": DIM, "alpha": 1.0, "l2": 10.0},
        arrays={
            "items.weight": rng.normal(0.0, 0.1, (size, DIM)).astype(np.float32),
            "items.bias": rng.normal(0.0, 0.1, size).astype(np.float32),
        },
        catalog=ReleaseCatalog.build(
            ids,
            titles=[f"Title {i}" for i in range(size)],
            genres=_genres(rng, size),
            first_seen=rng.integers(1_600_000_000, 1_700_000_000, size),
        ),
        popularity=rng.random(size).astype(np.float32),
        trending=rng.poisson(2.0, size).astype(np.float32),
    )
    private, public = generate_signing_key()
    signed = seal_signed(
        bundle.encode(quantize=["items.weight"] if quantized else []), private_key=private
    )
    del bundle
    picks = rng.choice(size, history + repeats, replace=False)
    out: dict = {"items": size, "table": "int8" if quantized else "float32"}
    with tempfile.TemporaryDirectory() as tmp:
        release_path = Path(tmp) / "release-000001.stamen"
        release_path.write_bytes(signed)
        out["bundle_bytes"] = len(signed)
        del signed
        key, folder = generate_key(), Path(tmp) / "device"
        rss_before = psutil.Process().memory_info().rss

        started = time.perf_counter()
        device = Device.open(folder, key=key, release_key=public)
        out["open_new_ms"] = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        device.apply_release(release_path)
        out["apply_release_ms"] = (time.perf_counter() - started) * 1e3
        device.record_many({"item": ids[i], "kind": "play"} for i in picks[:history])

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
        history_rows = device.history_indices()
        out["history_at_solve"] = len(history_rows)
        out["ials_solve"] = _percentiles(
            _timed(lambda: serving.factor(history_rows, None), repeats)
        )

        table = serving.table
        user = device.user_factor
        out["table_bytes"] = table.nbytes

        def bare() -> None:
            scores = table.scores(user[None])[0]
            np.argpartition(-scores, 10)[:10]

        out["bare_matvec_argpartition"] = _percentiles(_timed(bare, repeats))
        device.close()

        started = time.perf_counter()
        device = Device.open(folder, key=key)
        out["reopen_ms"] = (time.perf_counter() - started) * 1e3
        assert device.release is not None
        device.close()

        (Path(tmp) / "store").mkdir()
        store = EventStore(Path(tmp) / "store", key=generate_key())
        event = Event(item="x", kind="play", value=1.0, at=time.time(), context={})
        out["store_commit"] = _percentiles(_timed(lambda: store.append([event]), repeats))
        store.close()
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--history", type=int, default=50, help="the person's items")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        size, table = args.one
        print(json.dumps(one(int(size), table == "int8", args.history, args.repeats)))
        return
    bandwidth = read_bandwidth(2 << 30)
    print(f"single-core read bandwidth, 2 GiB working set: {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for size in args.sizes:
        for table in ("float32", "int8"):
            child = subprocess.run(
                [sys.executable, __file__, "--one", str(size), table]
                + ["--history", str(args.history), "--repeats", str(args.repeats)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            row = json.loads(child.stdout.strip().splitlines()[-1])
            row["read_bandwidth_bytes_per_s"] = read_bandwidth(row["table_bytes"])
            row["floor_ms"] = row["table_bytes"] / row["read_bandwidth_bytes_per_s"] * 1e3
            rows.append(row)
            print(
                f"{size:>9,} items {table:>7}: recommend p50 {row['recommend']['p50_ms']:.2f} "
                f"p99 {row['recommend']['p99_ms']:.2f} ms (floor {row['floor_ms']:.2f} ms), "
                f"record {row['record_new_item']['p50_ms']:.2f} ms, "
                f"apply {row['apply_release_ms']:.0f} ms, RSS {row['rss_mib']:.0f} MiB",
                flush=True,
            )
    write(args, rows, argv, bandwidth)


def write(args: argparse.Namespace, rows: list[dict], argv: list[str], bandwidth: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/device.py", *argv])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    (args.out / "device.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "read_bandwidth_2gib_bytes_per_s": bandwidth,
                "history": args.history,
                "repeats": args.repeats,
                "dim": DIM,
                "rows": rows,
            },
            indent=2,
        )
    )

    def ms(row: dict, name: str) -> str:
        return f"{row[name]['p50_ms']:.2f} / {row[name]['p99_ms']:.2f}"

    lines = [
        "# The embedded device on one core",
        "",
        f"Command: `{command}` ({machine}; every figure single-threaded, in a fresh process"
        f" per row; {DIM}-dimensional factors; a person with {args.history} items;"
        f" {args.repeats} calls per latency). The floor is the item table's bytes over one"
        " core's read bandwidth from a working set of the table's size (numpy sum, best of"
        " 5; a table that fits the last-level cache is read from it, as repeated calls"
        f" do). From main memory (2 GiB working set) one core reads {bandwidth / 1e9:.1f}"
        " GB/s.",
        "",
        "| items | table | recommend, pipeline p50 / p99 (ms) |"
        " recommend, retrieval only p50 / p99 (ms) | table (MB) | read (GB/s) |"
        " floor (ms) | retrieval p50 ÷ floor | bare matvec + argpartition p50 / p99 (ms) |"
        " RSS (MiB) | release file (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['items']:,} | {r['table']} | {ms(r, 'recommend')} | "
            f"{ms(r, 'recommend_retrieval')} | "
            f"{r['table_bytes'] / 1e6:.1f} | {r['read_bandwidth_bytes_per_s'] / 1e9:.1f} | "
            f"{r['floor_ms']:.3g} | {r['recommend_retrieval']['p50_ms'] / r['floor_ms']:.1f}× | "
            f"{ms(r, 'bare_matvec_argpartition')} | {r['rss_mib']:.0f} | "
            f"{r['bundle_bytes'] / 1e6:.1f} |"
        )
    lines += [
        "",
        "| items | table | record, new item p50 / p99 (ms) | record, seen item (ms) |"
        " iALS re-solve alone (ms) | store commit alone (ms) | open new (ms) |"
        " apply_release (ms) | reopen with release (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['items']:,} | {r['table']} | {ms(r, 'record_new_item')} | "
            f"{ms(r, 'record_seen_item')} | {ms(r, 'ials_solve')} | {ms(r, 'store_commit')} | "
            f"{r['open_new_ms']:.0f} | {r['apply_release_ms']:.0f} | {r['reopen_ms']:.0f} |"
        )
    lines += [
        "",
        "A new item's `record` commits the event (WAL, `synchronous=FULL`: an fsync) and then"
        " re-solves the user factor exactly; an item already in the history changes no"
        " item set, so only the commit is paid. The re-solve is timed for the person's"
        f" history at the end of the run ({rows[0]['history_at_solve']} items).",
    ]
    (args.out / "device.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
