"""The embedded device's footprint as a whole process, beside a bare ``import numpy``.

    python benchmarks/device_footprint.py [--repeats 7]

Builds a signed release of the MovieLens-100K size (1,682 items, 64-dimensional ``mf``
factors, loss ``ials``, float32 table): the catalogue (ids, titles, genres, year, first
seen) is ML-100K's own, loaded from the data directory (``$STAMEN_DATA_DIR``, default
``/work/shared/data``), the popularity its interaction counts; the item factors and biases
are seeded Gaussian (what they hold does not change the footprint). Then it runs, each in a
fresh ``python`` process under ``/usr/bin/time`` (wall time from the parent; peak resident
memory, the kernel's ``ru_maxrss`` of the whole process), ``--repeats`` times, interleaved:

- ``bare numpy``: ``python -c "import numpy"``, the floor of any app that uses numpy;
- ``import Device``: ``from stamen.client import Device`` and its module;
- ``device``: ``Device.open`` of a new folder, ``apply_release`` of the file, ``record`` of
  4 events, one ``recommend(10)`` through the whole on-device pipeline, ``close``; the
  process reports which of torch, flwr, ray, opacus, scipy and pydantic it loaded (none
  is the contract, ``tests/client/device/test_footprint.py``).

Reports the median and the best wall time and the median peak RSS of each row, and the
machine's load average (wall times on a loaded machine are longer). Writes
``benchmarks/results/device-footprint.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 64
TIME = "/usr/bin/time"
#: The modules whose absence is the device's contract.
HEAVY = ("torch", "flwr", "ray", "opacus", "scipy", "pydantic")

BARE = "import numpy"
IMPORT = "from stamen.client import Device; import stamen.client.device.device"
DEVICE = f"""
import json, sys, time
started = time.perf_counter()
from stamen.client import Device
folder, release, key, public, *items = sys.argv[1:]
imported = time.perf_counter()
device = Device.open(folder, key=bytes.fromhex(key), release_key=bytes.fromhex(public))
opened = time.perf_counter()
device.apply_release(release)
applied = time.perf_counter()
for item in items:
    device.record(item, "play")
recorded = time.perf_counter()
recommended = len(device.recommend(10))
done = time.perf_counter()
device.close()
print(json.dumps({{
    "recommended": recommended,
    "heavy_modules": sorted(m for m in {HEAVY!r} if m in sys.modules),
    "import_s": imported - started,
    "open_s": opened - imported,
    "apply_s": applied - opened,
    "records_s": recorded - applied,
    "recommend_s": done - recorded,
}}))
"""


def build_release(folder: Path) -> tuple[Path, bytes, list[str], dict]:
    """The signed ML-100K-sized release in ``folder``, its public key, four item ids to
    record and a description of the release."""
    from common import local_dataset

    from stamen.models.bundle import ReleaseBundle, ReleaseCatalog
    from stamen.privacy import generate_signing_key, seal_signed

    data = local_dataset("ml-100k")
    catalog = ReleaseCatalog.from_catalog(data.catalog)
    n = len(catalog)
    rng = np.random.default_rng(0)
    bundle = ReleaseBundle(
        release=1,
        model="mf",
        settings={"loss": "ials", "dim": DIM, "alpha": 1.0, "l2": 10.0},
        arrays={
            "items.weight": rng.normal(0.0, 0.1, (n, DIM)).astype(np.float32),
            "items.bias": rng.normal(0.0, 0.1, n).astype(np.float32),
        },
        catalog=catalog,
        popularity=np.bincount(data.interactions.item, minlength=n).astype(np.float32),
    )
    private, public = generate_signing_key()
    path = folder / "release-000001.stamen"
    path.write_bytes(seal_signed(bundle.encode(), private_key=private))
    items = [catalog.item_id(int(i)) for i in rng.choice(n, 4, replace=False)]
    about = {"items": n, "dim": DIM, "catalogue": "ml-100k", "bytes": path.stat().st_size}
    return path, public, items, about


def run_once(args: list[str], scratch: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of ``python *args`` in a fresh process, and the
    last line it printed."""
    report = scratch / "time.txt"
    started = time.perf_counter()
    child = subprocess.run(
        [TIME, "-o", str(report), "-f", "%M", sys.executable, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    lines = child.stdout.strip().splitlines()
    return {
        "wall_s": wall,
        "peak_rss_mib": int(report.read_text().split()[-1]) / 1024,
        "printed": lines[-1] if lines else "",
    }


def summary(runs: list[dict]) -> dict:
    """Median and best wall time, median and largest peak RSS of ``runs``."""
    walls = [r["wall_s"] for r in runs]
    rss = [r["peak_rss_mib"] for r in runs]
    return {
        "wall_s_median": statistics.median(walls),
        "wall_s_best": min(walls),
        "peak_rss_mib_median": statistics.median(rss),
        "peak_rss_mib_max": max(rss),
        "runs": runs,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each row")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not Path(TIME).is_file():
        sys.exit(f"{TIME} is missing (GNU time measures each process's peak RSS)")
    from stamen.privacy import generate_key

    rows: dict[str, list[dict]] = {"bare numpy": [], "import Device": [], "device": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        release, public, items, about = build_release(scratch)
        print(f"release: {about}", flush=True)
        for repeat in range(args.repeats):
            folder = scratch / f"device-{repeat}"
            device_args = [str(folder), str(release), generate_key().hex(), public.hex(), *items]
            rows["bare numpy"].append(run_once(["-c", BARE], scratch))
            rows["import Device"].append(run_once(["-c", IMPORT], scratch))
            run = run_once(["-c", DEVICE, *device_args], scratch)
            run.update(json.loads(run.pop("printed")))
            rows["device"].append(run)
            shutil.rmtree(folder)
            print(
                f"run {repeat + 1}: "
                + ", ".join(
                    f"{name} {r[-1]['wall_s']:.2f} s {r[-1]['peak_rss_mib']:.0f} MiB"
                    for name, r in rows.items()
                )
                + f"; loaded {run['heavy_modules']}",
                flush=True,
            )
    for runs in rows.values():
        for r in runs:
            r.pop("printed", None)
    write(args, argv, about, {name: summary(runs) for name, runs in rows.items()}, load_before)


def write(
    args: argparse.Namespace, argv: list[str], about: dict, rows: dict, load_before: tuple
) -> None:
    """Print the table and write ``device-footprint.{json,md}``."""
    from common import command, report_head, write_results

    run = command("device_footprint.py", argv)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load = f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    heavy = sorted({m for r in rows["device"]["runs"] for m in r["heavy_modules"]})
    phases = ("import_s", "open_s", "apply_s", "records_s", "recommend_s")
    inside = {p: statistics.median(r[p] for r in rows["device"]["runs"]) for p in phases}
    record = {
        "command": run,
        "machine": machine,
        "python": platform.python_version(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "release": about,
        "repeats": args.repeats,
        "targets": {"wall_s": 0.5, "peak_rss_mib": 100},
        "heavy_modules_loaded": heavy,
        "device_phases_median_s": inside,
        "rows": rows,
    }
    lines = report_head(
        "The embedded device's footprint, as whole processes",
        f"Command: `{run}` ({machine}, Python {record['python']}; one-minute load average"
        f" {load}). Each row is a fresh `python` process under `/usr/bin/time`, run"
        f" {args.repeats} times, interleaved with the others: wall time from the parent"
        " (interpreter start to exit), peak RSS as the kernel counts it for the process."
        f" The release: ML-100K's catalogue ({about['items']:,} items, from the data"
        f" directory), {about['dim']}-dimensional `mf` factors (loss `ials`, float32,"
        f" seeded Gaussian), {about['bytes'] / 1e6:.1f} MB signed. `device` = open a new"
        " folder, `apply_release`, 4 `record`s, one `recommend(10)` (the whole pipeline),"
        " close. Targets (issue 26): at most 0.5 s wall and 100 MiB peak.",
        columns="process | wall, median (s) | wall, best (s) | peak RSS, median (MiB)",
    )
    names = {"bare numpy": f'`python -c "{BARE}"`', "import Device": f"`{IMPORT}`"}
    for name, r in rows.items():
        lines.append(
            f"| {names.get(name, name)} | {r['wall_s_median']:.2f} | {r['wall_s_best']:.2f} |"
            f" {r['peak_rss_mib_median']:.0f} |"
        )
    lines += [
        "",
        "Inside the `device` process (medians, s): "
        + ", ".join(f"{p.removesuffix('_s')} {v:.3f}" for p, v in inside.items())
        + f". Heavy modules it loaded: {', '.join(heavy) if heavy else 'none'}"
        f" (watched: {', '.join(HEAVY)}).",
    ]
    print("\n".join(lines), flush=True)
    write_results(args.out, "device-footprint", record, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
