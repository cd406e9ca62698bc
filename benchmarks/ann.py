"""Approximate top-100 retrieval over a large item table: faiss and usearch HNSW against exact.

    python benchmarks/ann.py
    python benchmarks/ann.py --sizes 20000 --queries 200 --name smoke

On a device, recommend scores every item, ``table @ v + bias`` (float32 ``(n, 64)`` item
factors, float32 ``(n,)`` biases), and takes the best. That is maximum inner product
search (MIPS) with a per-item bias, folded in as a 65th column (items ``[x, b]``, the
query ``[v, 1]``): ``ip`` below searches those 65-wide rows by inner product; ``l2``
is the MIPS-to-L2 reduction (a 66th column ``sqrt(R² - |[x, b]|²)``, ``R`` the largest
row norm, the query's 66th coordinate 0), searched by squared Euclidean distance.

For each catalogue size of ``--sizes`` and each table of ``--tables``:

- ``gaussian``: the draw of ``benchmarks/device.py``'s MF release
  (``np.random.default_rng([n, 1])``, N(0, 0.1²) factors, then N(0, 0.1²) biases), the
  hard case for a graph index: no structure to exploit;
- ``structured``: ``n // 500`` cluster centres (at least 10) drawn N(0, 0.1²), each item
  a centre plus N(0, 0.03²) noise, biases N(0, 0.1²), as factors learned from real
  interactions cluster by taste;

and ``--queries`` user-like vectors: the mean of 50 random item rows plus Gaussian noise
of the same per-coordinate spread, scaled so that the spread of ``table @ v`` over the
items equals that of the biases (so neither the factors nor the biases alone decide the
ranking), it measures, with every library on ONE thread for search:

- the exact ``numpy`` path (``table @ v + bias``, ``np.argpartition`` for the top 100,
  then sorted), which is the ground truth of recall@100 (its top 100 of every query);
- faiss ``IndexFlatIP`` (exact) on the 65-wide rows;
- faiss ``IndexPQFastScan`` (4-bit product quantization of the rows padded with zeros to
  68 wide, ``--pq-m`` sub-quantizers, trained on ``--pq-train`` random items, inner
  product) asked for its best ``--pq-candidates``, which are then re-scored exactly from
  the table and the best 100 kept (that re-scoring is inside the timed query);
- faiss ``IndexHNSWFlat`` (``--faiss-metrics``: ``ip``, ``l2``) for each ``--faiss-m``, built with
  ``--faiss-ef-construction``, searched at each ``--faiss-ef-search``;
- usearch ``Index`` (``ip`` metric) for each ``--usearch-connectivity`` and scalar kind
  of ``--usearch-dtypes``, built with ``--usearch-expansion-add``, searched at each
  ``--usearch-expansion-search``;

per method: recall@100 against exact, p50 / p99 latency of one query (each timed alone
with ``perf_counter``), the build time with every core (and on one core: of the whole
table for PQ; of a ``--single-build-size`` prefix, for the first configuration of each
graph library), the saved index's bytes, and the time to open the saved file,
memory-mapped where the library can (faiss ``read_index(path, IO_FLAG_MMAP_IFC)``,
usearch ``Index.restore(path, view=True)``) with the resident memory that open added; the
searches run on that opened index. ``--libraries`` picks which of these run besides the
exact path (default all). And the exact ``numpy`` path's p50 / p99 on prefixes of the
table (the ``--ladder`` sizes), to place the size below which exact is fast enough.

Writes ``--out``/ann[-<name>].{json,md} (default benchmarks/results), after each table
(a run stopped early keeps the tables it finished; its load average "after" is missing).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import RESULTS, Stopwatch, command, report_head, write_results  # noqa: E402

DIM = 64
TOP = 100
TABLES = ("gaussian", "structured")


def gaussian(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The item factors and biases of ``benchmarks/device.py``'s MF release of ``n`` items."""
    rng = np.random.default_rng([n, 1])
    table = rng.normal(0.0, 0.1, (n, DIM)).astype(np.float32)
    return table, rng.normal(0.0, 0.1, n).astype(np.float32)


def structured(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Items around ``n // 500`` (at least 10) centres: centre N(0, 0.1²) + N(0, 0.03²)."""
    rng = np.random.default_rng([n, 2])
    centres = rng.normal(0.0, 0.1, (max(n // 500, 10), DIM)).astype(np.float32)
    table = centres[rng.integers(0, len(centres), n)]
    table += rng.normal(0.0, 0.03, (n, DIM)).astype(np.float32)
    return table, rng.normal(0.0, 0.1, n).astype(np.float32)


def queries(table: np.ndarray, bias: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` user-like vectors (see the module docstring)."""
    rng = np.random.default_rng([seed, 3])
    out = np.empty((count, DIM), np.float32)
    sample = table[rng.integers(0, len(table), min(len(table), 20_000))]
    for i in range(count):
        mean = table[rng.integers(0, len(table), 50)].mean(axis=0)
        v = mean + rng.normal(0.0, float(mean.std()), DIM)
        out[i] = v * (float(bias.std()) / float((sample @ v).std()))
    return out


def ip_rows(table: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Items ``[x, b]`` for inner-product search."""
    return np.ascontiguousarray(np.hstack([table, bias[:, None]]), np.float32)


def l2_rows(rows: np.ndarray) -> np.ndarray:
    """The MIPS-to-L2 reduction of ``rows``: a last column ``sqrt(R² - |row|²)``."""
    norms = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([rows, extra[:, None]]), np.float32)


def saved_and_opened(faiss: Any, index: Any, path: str, row: dict) -> Any:
    """``index`` written to ``path`` and read back with ``IO_FLAG_MMAP_IFC``; its bytes,
    the open's milliseconds and the resident memory the open added, recorded in ``row``."""
    faiss.write_index(index, path)
    row["index_bytes"] = os.path.getsize(path)
    before = rss_bytes()
    started = time.perf_counter()
    opened = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    row["open_ms"] = (time.perf_counter() - started) * 1e3
    row["open_rss_added_bytes"] = rss_bytes() - before
    return opened


def exact_top(table: np.ndarray, bias: np.ndarray, v: np.ndarray, k: int = TOP) -> np.ndarray:
    """The exact path: scores, ``argpartition`` for the top ``k``, those sorted."""
    scores = table @ v + bias
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def latency(samples: list[float]) -> dict[str, float]:
    """p50 / p99 in milliseconds of ``samples`` seconds."""
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def run_queries(search: Callable[[np.ndarray], np.ndarray], qs: np.ndarray) -> tuple:
    """Each query timed alone: the ids found per query and the seconds each took."""
    for q in qs[:5]:  # warm up
        search(q)
    found, took = [], []
    for q in qs:
        started = time.perf_counter()
        ids = search(q)
        took.append(time.perf_counter() - started)
        found.append(np.asarray(ids))
    return found, took


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (top-100 sets)."""
    hits = [len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth, strict=False)]
    return float(np.mean(hits))


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def method_row(name: str, params: dict, found: list, took: list, truth: np.ndarray) -> dict:
    """A result row for one method and parameter setting."""
    return {
        "method": name,
        "params": params,
        "recall_at_100": recall(found, truth),
        **latency(took),
    }


def flat_rows(
    args: argparse.Namespace, rows: np.ndarray, qs: np.ndarray, truth: np.ndarray, clock: Stopwatch
) -> list[dict]:
    """faiss ``IndexFlatIP`` (exact), on the first ``--exact-queries``."""
    import faiss

    out = []
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(rows.shape[1])
    flat.add(rows)
    q1 = np.hstack([qs, np.ones((len(qs), 1), np.float32)])
    nflat = min(len(qs), args.exact_queries)
    found, took = run_queries(lambda q: flat.search(q[None], TOP)[1][0], q1[:nflat])
    out.append(
        {**method_row("faiss IndexFlatIP", {}, found, took, truth), "queries": nflat}
        | {"index_bytes": rows.nbytes}
    )
    clock.log(f"faiss flat: p50 {out[-1]['p50_ms']:.2f} ms")
    return out


def faiss_rows(
    args: argparse.Namespace, rows: np.ndarray, qs: np.ndarray, truth: np.ndarray, clock: Stopwatch
) -> list[dict]:
    """faiss flat (exact) and HNSW (ip, l2) rows, as ``--libraries`` asks."""
    import faiss

    out: list[dict] = []
    if "faiss-flat" in args.libraries:
        out += flat_rows(args, rows, qs, truth, clock)
    if "faiss-hnsw" not in args.libraries:
        return out
    q1 = np.hstack([qs, np.ones((len(qs), 1), np.float32)])
    first = True
    for metric in args.faiss_metrics:
        data = rows if metric == "ip" else l2_rows(rows)
        qm = q1 if metric == "ip" else np.hstack([q1, np.zeros((len(q1), 1), np.float32)])
        kind = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        for m in args.faiss_m:

            def build(part: np.ndarray, m: int = m, kind: int = kind) -> object:
                index = faiss.IndexHNSWFlat(part.shape[1], m, kind)
                index.hnsw.efConstruction = args.faiss_ef_construction
                index.add(part)
                return index

            build_row: dict = {}
            if first and args.single_build_size:
                faiss.omp_set_num_threads(1)
                started = time.perf_counter()
                build(data[: args.single_build_size])
                build_row["build_1thread_prefix_s"] = time.perf_counter() - started
                build_row["build_1thread_prefix_items"] = min(len(data), args.single_build_size)
                first = False
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            started = time.perf_counter()
            index = build(data)
            build_row["build_all_threads_s"] = time.perf_counter() - started
            faiss.omp_set_num_threads(1)
            with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
                opened = saved_and_opened(faiss, index, os.path.join(tmp, "hnsw.faiss"), build_row)
                del index
                clock.log(
                    f"faiss HNSW{m} {metric}: built in {build_row['build_all_threads_s']:.0f} s,"
                    f" opened in {build_row['open_ms']:.1f} ms"
                )
                for ef in args.faiss_ef_search:
                    opened.hnsw.efSearch = ef

                    def search(q: np.ndarray, index: object = opened) -> np.ndarray:
                        return index.search(q[None], TOP)[1][0]  # type: ignore[attr-defined]

                    found, took = run_queries(search, qm)
                    params = {
                        "metric": metric,
                        "M": m,
                        "efConstruction": args.faiss_ef_construction,
                    }
                    row = method_row(
                        "faiss HNSWFlat", params | {"efSearch": ef}, found, took, truth
                    )
                    out.append(row | build_row)
                    clock.log(
                        f"  efSearch {ef}: recall {row['recall_at_100']:.3f}, p50"
                        f" {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms"
                    )
                del opened
    return out


def usearch_rows(
    args: argparse.Namespace, rows: np.ndarray, qs: np.ndarray, truth: np.ndarray, clock: Stopwatch
) -> list[dict]:
    """usearch HNSW rows (ip metric), each connectivity and scalar kind."""
    from usearch.index import Index

    out = []
    q1 = np.ascontiguousarray(np.hstack([qs, np.ones((len(qs), 1), np.float32)]))
    keys = np.arange(len(rows), dtype=np.uint64)
    first = True
    for dtype in args.usearch_dtypes:
        for conn in args.usearch_connectivity:

            def build(
                part: np.ndarray, threads: int, conn: int = conn, dtype: str = dtype
            ) -> Index:
                index = Index(
                    ndim=part.shape[1],
                    metric="ip",
                    dtype=dtype,
                    connectivity=conn,
                    expansion_add=args.usearch_expansion_add,
                )
                index.add(keys[: len(part)], part, threads=threads)
                return index

            build_row: dict = {}
            if first and args.single_build_size:
                started = time.perf_counter()
                build(rows[: args.single_build_size], 1)
                build_row["build_1thread_prefix_s"] = time.perf_counter() - started
                build_row["build_1thread_prefix_items"] = min(len(rows), args.single_build_size)
                first = False
            started = time.perf_counter()
            index = build(rows, 0)
            build_row["build_all_threads_s"] = time.perf_counter() - started
            with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
                path = os.path.join(tmp, "hnsw.usearch")
                index.save(path)
                del index
                build_row["index_bytes"] = os.path.getsize(path)
                before = rss_bytes()
                started = time.perf_counter()
                opened = Index.restore(path, view=True)
                build_row["open_ms"] = (time.perf_counter() - started) * 1e3
                build_row["open_rss_added_bytes"] = rss_bytes() - before
                clock.log(
                    f"usearch {dtype} connectivity {conn}: built in"
                    f" {build_row['build_all_threads_s']:.0f} s, opened in"
                    f" {build_row['open_ms']:.1f} ms"
                )
                for ef in args.usearch_expansion_search:
                    opened.expansion_search = ef

                    def search(q: np.ndarray, index: Index = opened) -> np.ndarray:
                        return index.search(q, TOP, threads=1).keys.astype(np.int64)

                    found, took = run_queries(search, q1)
                    params = {
                        "metric": "ip",
                        "dtype": dtype,
                        "connectivity": conn,
                        "expansion_add": args.usearch_expansion_add,
                        "expansion_search": ef,
                    }
                    row = method_row("usearch", params, found, took, truth)
                    out.append(row | build_row)
                    clock.log(
                        f"  expansion_search {ef}: recall {row['recall_at_100']:.3f}, p50"
                        f" {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms"
                    )
                del opened
    return out


def pq_rows(
    args: argparse.Namespace,
    table: np.ndarray,
    bias: np.ndarray,
    qs: np.ndarray,
    truth: np.ndarray,
    clock: Stopwatch,
) -> list[dict]:
    """faiss ``IndexPQFastScan`` (4-bit product quantization, inner product) over the rows
    padded with zeros to 68 wide, its best ``candidates`` re-scored exactly from the table."""
    import faiss

    out = []
    width = 68
    rows = np.zeros((len(table), width), np.float32)
    rows[:, :DIM], rows[:, DIM] = table, bias
    q1 = np.zeros((len(qs), width), np.float32)
    q1[:, :DIM], q1[:, DIM] = qs, 1.0
    for m in args.pq_m:
        build_row: dict = {}
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        started = time.perf_counter()
        index = faiss.IndexPQFastScan(width, m, 4, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng([args.seed, 4]).permutation(len(rows))[: args.pq_train]
        index.train(rows[np.sort(sample)])
        index.add(rows)
        build_row["build_all_threads_s"] = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        if args.single_build_size:
            started = time.perf_counter()
            again = faiss.IndexPQFastScan(width, m, 4, faiss.METRIC_INNER_PRODUCT)
            again.train(rows[np.sort(sample)])
            again.add(rows)
            build_row["build_1thread_s"] = time.perf_counter() - started
            del again
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            opened = saved_and_opened(faiss, index, os.path.join(tmp, "pq.faiss"), build_row)
            del index
            clock.log(
                f"faiss PQ{m}x4fs: built in {build_row['build_all_threads_s']:.1f} s,"
                f" opened in {build_row['open_ms']:.1f} ms"
            )
            for k in args.pq_candidates:

                def search(q: np.ndarray, k: int = k, index: object = opened) -> np.ndarray:
                    ids = index.search(q[None], k)[1][0]  # type: ignore[attr-defined]
                    ids = ids[ids >= 0]
                    scores = table[ids] @ q[:DIM] + bias[ids]
                    best = np.argpartition(-scores, TOP)[:TOP]
                    return ids[best][np.argsort(-scores[best])]

                found, took = run_queries(search, q1)
                params = {"metric": "ip", "M": m, "nbits": 4, "candidates": k}
                row = method_row("faiss PQFastScan + exact re-score", params, found, took, truth)
                out.append(row | build_row)
                clock.log(
                    f"  candidates {k}: recall {row['recall_at_100']:.3f}, p50"
                    f" {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms"
                )
            del opened
    return out


def measure(args: argparse.Namespace, size: int, kind: str, clock: Stopwatch) -> dict:
    """Every method on one table."""
    table, bias = (gaussian if kind == "gaussian" else structured)(size)
    qs = queries(table, bias, args.queries, args.seed)
    clock.log(f"{kind} {size:,}: table ready")
    found, took = run_queries(lambda q: exact_top(table, bias, q), qs)
    truth = np.stack(found)
    methods = [method_row("exact numpy", {}, found, took, truth) | {"index_bytes": 0}]
    clock.log(f"exact numpy: p50 {methods[0]['p50_ms']:.2f} p99 {methods[0]['p99_ms']:.2f} ms")
    ladder = []
    for n in sorted({s for s in args.ladder if TOP < s < size}):
        part, pbias = table[:n], bias[:n]
        _, t = run_queries(lambda q, p=part, b=pbias: exact_top(p, b, q), qs[: args.exact_queries])
        ladder.append({"items": n, **latency(t)})
    if "faiss-pq" in args.libraries:
        methods += pq_rows(args, table, bias, qs, truth, clock)
    rows = ip_rows(table, bias)
    if {"faiss-flat", "faiss-hnsw"} & set(args.libraries):
        methods += faiss_rows(args, rows, qs, truth, clock)
    if "usearch" in args.libraries:
        methods += usearch_rows(args, rows, qs, truth, clock)
    return {"items": size, "table": kind, "methods": methods, "exact_ladder": ladder}


def versions() -> dict[str, str]:
    """The versions of the libraries measured."""
    out = {"numpy": np.__version__, "python": platform.python_version()}
    for name in ("faiss", "usearch"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "absent"
    return out


def write(args: argparse.Namespace, argv: list[str], record: dict) -> None:
    """The results files."""
    env = record["environment"]
    load = env["load_average_1min"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = report_head(
        "Approximate top-100 retrieval against exact, one thread",
        f"Command: `{record['command']}` ({env['machine']}; {versions};"
        f" load average (1 min) {load['before']:.2f} before, "
        + (f"{load['after']:.2f} after)." if "after" in load else "run unfinished)."),
        f"{args.queries} user-like queries per table (exact faiss flat and the prefixes:"
        f" the first {min(args.queries, args.exact_queries)}); each query timed alone, every"
        " search on one thread. Rows are"
        " the 64 factors plus the bias as a 65th column (`ip`), or the MIPS-to-L2 reduction"
        " (`l2`, a 66th column). Build: all cores"
        f" ({os.cpu_count()}); where given, `1-thread build` is of the first"
        f" {args.single_build_size:,} items only. Open: the saved index opened"
        " memory-mapped where the library can (faiss `IO_FLAG_MMAP_IFC`, usearch"
        " `restore(view=True)`), and the resident memory that added (mapped pages count once"
        " touched; equal to the file's size: read into memory); searches run on that opened"
        " index. See the script's docstring"
        " for the tables and queries.",
        columns="items | table | method | parameters | recall@100 | p50 (ms) | p99 (ms) |"
        " build, all cores (s) | 1-thread build of prefix (s) | index (MB) | open (ms) |"
        " RSS added by open (MB)",
    )
    for r in record["rows"]:
        for m in r["methods"]:
            params = ", ".join(f"{k}={v}" for k, v in m["params"].items()) or "–"

            def num(key: str, fmt: str, m: dict = m) -> str:
                return format(m[key], fmt) if key in m else "–"

            one = num("build_1thread_prefix_s", ".1f")
            if "build_1thread_s" in m:
                one = f"{m['build_1thread_s']:.1f} (all items)"
            added = num("open_rss_added_bytes", ".0f")
            if "open_rss_added_bytes" in m:
                added = f"{m['open_rss_added_bytes'] / 1e6:.1f}"
            lines.append(
                f"| {r['items']:,} | {r['table']} | {m['method']} | {params} |"
                f" {m['recall_at_100']:.4f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} |"
                f" {num('build_all_threads_s', '.1f')} | {one} |"
                f" {m['index_bytes'] / 1e6:.1f} | {num('open_ms', '.2f')} | {added} |"
            )
    lines += ["", "Exact numpy path on prefixes of each table (first queries):", ""]
    lines += [
        "| items | table | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|",
    ]
    for r in record["rows"]:
        for step in [*r["exact_ladder"], {"items": r["items"], **r["methods"][0]}]:
            p50, p99 = step["p50_ms"], step["p99_ms"]
            lines.append(f"| {step['items']:,} | {r['table']} | {p50:.3f} | {p99:.3f} |")
    write_results(args.out, "ann" + (f"-{args.name}" if args.name else ""), record, lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200, help="for faiss flat, ladder")
    parser.add_argument(
        "--libraries",
        nargs="+",
        choices=("faiss-pq", "faiss-flat", "faiss-hnsw", "usearch"),
        default=["faiss-pq", "faiss-flat", "faiss-hnsw", "usearch"],
    )
    parser.add_argument("--pq-m", type=int, nargs="+", default=[34, 68])
    parser.add_argument("--pq-train", type=int, default=100_000, help="items PQ is trained on")
    parser.add_argument(
        "--pq-candidates", type=int, nargs="+", default=[1000, 2000, 3000, 4000, 5000]
    )
    parser.add_argument("--faiss-metrics", nargs="+", choices=("ip", "l2"), default=["ip"])
    parser.add_argument("--faiss-m", type=int, nargs="+", default=[32])
    parser.add_argument("--faiss-ef-construction", type=int, default=64)
    parser.add_argument("--faiss-ef-search", type=int, nargs="+", default=[200, 400, 800, 1600])
    parser.add_argument("--usearch-dtypes", nargs="+", default=["f32"])
    parser.add_argument("--usearch-connectivity", type=int, nargs="+", default=[16])
    parser.add_argument("--usearch-expansion-add", type=int, default=64)
    parser.add_argument(
        "--usearch-expansion-search", type=int, nargs="+", default=[200, 400, 800, 1600]
    )
    parser.add_argument("--single-build-size", type=int, default=50_000, help="0: skip")
    parser.add_argument(
        "--ladder",
        type=int,
        nargs="+",
        default=[10_000, 30_000, 100_000, 300_000],
        help="prefix sizes for the exact path (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", default=None, help="folder for the saved indexes")
    parser.add_argument("--name", default="", help="suffix of the results files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clock = Stopwatch()
    record: dict = {
        "command": command("ann.py", argv),
        "environment": {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "versions": versions(),
            "load_average_1min": {"before": os.getloadavg()[0]},
        },
        "top": TOP,
        "dim": DIM,
        "rows": [],
    }
    for size in args.sizes:
        for kind in args.tables:
            record["rows"].append(measure(args, size, kind, clock))
            write(args, argv, record)
    record["environment"]["load_average_1min"]["after"] = os.getloadavg()[0]
    record["environment"]["seconds"] = clock.seconds
    write(args, argv, record)
    clock.log("done")


if __name__ == "__main__":
    main(sys.argv[1:])
