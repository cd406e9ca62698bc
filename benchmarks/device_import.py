"""Importing a long events file into a device, as whole processes: ``stamen device import``
of a generated CSV, beside a bare ``python -c "import numpy"`` in the same run.

    python benchmarks/device_import.py [--mb 200] [--items 10000]

Writes a CSV of one person's events (columns ``item,kind,value,at``; ``--items`` distinct
string ids, kinds ``play`` and ``rating``, increasing times) of at least ``--mb`` megabytes,
makes a device (``stamen device init``), then times ``stamen device import --json`` of the
file: wall time from the parent, peak resident memory from ``/usr/bin/time`` (the kernel's
``ru_maxrss`` of that one process), and the events the device reports stored. The whole
file goes through one transaction (the import is all or nothing), so the database's
write-ahead log holds it until the commit. Writes ``benchmarks/results/device-import.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIME = "/usr/bin/time"
sys.path.insert(0, str(HERE))

from common import command, report_head, write_results  # noqa: E402

from stamen.privacy import generate_signing_key  # noqa: E402


def events_file(path: Path, megabytes: float, items: int) -> int:
    """Write the events CSV; returns its rows."""
    target, rows = int(megabytes * 1_000_000), 0
    with path.open("w", encoding="utf-8") as handle:
        handle.write("item,kind,value,at\n")
        while handle.tell() < target:
            lines = []
            for k in range(rows, rows + 10_000):
                kind, value = ("rating", 1 + k % 5) if k % 3 == 0 else ("play", 1)
                lines.append(f"track-{(k * 7919) % items:06d},{kind},{value},{1_500_000_000 + k}\n")
            handle.write("".join(lines))
            rows += 10_000
    return rows


def measured(argv: list[str], work: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (``/usr/bin/time``'s, of the child alone) and stdout of
    one child process."""
    peak = work / "peak"
    started = time.perf_counter()
    done = subprocess.run(
        [TIME, "-f", "%M", "-o", str(peak), *argv], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return wall, int(peak.read_text().split()[-1]) / 1024, done.stdout


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    stamen = str(Path(sys.executable).parent / "stamen")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "events.csv"
        rows = events_file(csv, args.mb, args.items)
        size = csv.stat().st_size
        print(f"wrote {rows} rows, {size / 1e6:.1f} MB", flush=True)
        public = work / "release.pub"
        public.write_bytes(generate_signing_key()[1])
        measured(
            [stamen, "device", "init", str(work / "phone"), "--release-key", str(public)], work
        )
        bare = measured([sys.executable, "-c", "import numpy"], work)
        wall, peak, out = measured(
            [stamen, "device", "import", str(work / "phone"), str(csv), "--json"], work
        )
        report = json.loads(out)
    record = {
        "command": command("device_import.py", argv),
        "machine": {
            "cpus": os.cpu_count(),
            "load": os.getloadavg(),
            "python": platform.python_version(),
        },
        "rows": rows,
        "bytes": size,
        "items": args.items,
        "import": {"wall_s": wall, "peak_mib": peak, "stored": report["stored"]},
        "bare_numpy": {"wall_s": bare[0], "peak_mib": bare[1]},
    }
    lines = report_head(
        "Importing a long events file into a device",
        f"Command: `{record['command']}`",
        f"One person's events: {rows:,} rows, {size / 1e6:.1f} MB of CSV, {args.items:,} "
        f"distinct items; one `stamen device import --json` process (one transaction), "
        f'beside a bare `python -c "import numpy"`. {os.cpu_count()} CPUs, load average '
        f"{record['machine']['load'][0]:.1f} at the end.",
        columns="process | wall s | peak RSS MiB | events stored",
    )
    lines += [
        f"| bare `import numpy` | {bare[0]:.2f} | {bare[1]:.0f} | — |",
        f"| `stamen device import` | {wall:.1f} | {peak:.0f} | {report['stored']:,} |",
    ]
    write_results(args.out, "device-import", record, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
