"""Build the documentation's Benchmarks page from the recorded results, so that a number on
the site is always the recorded one.

    python benchmarks/results_page.py           # writes docs/benchmarks.md and its images
    python benchmarks/results_page.py --check   # exit 1 when the committed page is stale

Every record ``benchmarks/results/**/<name>.md`` (what a benchmark script wrote beside its
``<name>.json``) is copied into ``docs/benchmarks.md`` verbatim but for its headings, which
move two levels down, grouped by the script that made it (the ``Command:`` line each record
starts with); a section opens with that script's docstring (its protocol). A plot
``<name>.png`` beside a record (the privacy-utility and population curves) is copied to
``docs/images/benchmarks/`` and shown under it. Records in a sub-folder of
``benchmarks/results/`` (superseded and tuning runs) follow the current ones in a section of
their own. A sweep recorded by ``stamen sweep --out benchmarks/results/<name>`` is one
record, its ``sweep.md`` (the command read from its ``sweep.json``) with ``sweep.png``;
the folders of its runs (each marked by its ``sweep-run.json``) are its raw material and
not shown. ``tests/docs/test_benchmarks_page.py`` checks that the committed page and images
are what this script builds now.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "images" / "benchmarks"
#: Where the page refers to its images from (relative to ``docs/``).
IMAGE_URL = "images/benchmarks"

#: The sections, in page order: script stem -> title. A script not named here gets a
#: section after these, titled by its file name.
SECTIONS: dict[str, str] = {
    "protocol": "Quality against the baselines",
    "engines": "The batched engine against Flower's",
    "privacy_utility": "Privacy against utility",
    "private_quality": "Private ALS against DP popularity",
    "population": "Privacy against population size",
    "attack": "The item-set inference attack",
    "pipeline": "The on-device pipeline",
    "two_tower": "Two-tower model and cold start",
    "sequential": "The sequential model",
    "order_quality": "Order in the timestamps",
    "trending": "Private trending counts",
    "experiments": "Private A/B experiments",
    "quantization": "int8 item tables",
    "device": "The device: latency, memory, release costs",
    "device_footprint": "The device's footprint as a process",
    "device_concurrency": "The device: recommend while a release is applied",
    "device_import": "Importing a long events file into a device",
    "deployment": "Deployment over Flower's transport",
    "secagg_rounds": "SecAgg+ rounds",
    "als_rounds": "Private ALS rounds on Flower",
    "sweep": "Sweeps (`stamen sweep`)",
}

_COMMAND = re.compile(r"^Command: `python benchmarks/(?P<script>[A-Za-z0-9_]+)\.py")
_HEADING = re.compile(r"^(#{1,4}) ")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST = re.compile(r"^(?:[-*]|\d+\.) ")
_ITEM = re.compile(r"^(?:[-*]|\d+\.) |^\s")


@dataclass(frozen=True)
class Record:
    """One recorded result: its markdown, the script that wrote it, its plot if any."""

    markdown: Path
    script: str
    plot: Path | None
    results: Path = RESULTS
    #: A sweep's command (its record has no ``Command:`` line of its own).
    command: str | None = None

    @property
    def name(self) -> str:
        """The record's path under ``benchmarks/results`` without its suffix."""
        return self.markdown.relative_to(self.results).with_suffix("").as_posix()

    @property
    def current(self) -> bool:
        """Whether the record sits at the top of ``benchmarks/results`` (not superseded),
        or is a sweep's record in its own folder there."""
        folder = self.markdown.parent
        return folder == self.results or (self.script == "sweep" and folder.parent == self.results)


class RecordError(ValueError):
    """A record the page cannot be built from (the message names the file)."""


def sweep_run(path: Path, results: Path = RESULTS) -> bool:
    """Whether ``path`` lies in the folder of one run of a recorded sweep (a folder under
    ``results`` holding a ``sweep-run.json``)."""
    return any(
        (folder / "sweep-run.json").is_file()
        for folder in path.parents
        if results in folder.parents
    )


def _sweep(markdown: Path) -> Record | None:
    """A sweep's record: ``sweep.md`` beside the ``sweep.json`` that names its command."""
    twin = markdown.with_suffix(".json")
    if markdown.name != "sweep.md" or not twin.is_file():
        return None
    command = json.loads(twin.read_text(encoding="utf-8")).get("command")
    if not isinstance(command, list) or command[1:2] != ["sweep"]:
        return None
    plot = markdown.with_suffix(".png")
    shown = " ".join(["stamen", *command[1:]])
    return Record(markdown, "sweep", plot if plot.is_file() else None, command=shown)


def records(results: Path = RESULTS) -> list[Record]:
    """Every markdown record under ``results``, current ones first, each group by name."""
    found = []
    for markdown in sorted(results.rglob("*.md")):
        if sweep_run(markdown, results):
            continue
        sweep = _sweep(markdown)
        if sweep is not None:
            found.append(Record(sweep.markdown, "sweep", sweep.plot, results, sweep.command))
            continue
        lines = markdown.read_text(encoding="utf-8").splitlines()
        match = next((_COMMAND.match(line) for line in lines[:5] if _COMMAND.match(line)), None)
        if match is None:
            raise RecordError(
                f"{markdown}: no 'Command: `python benchmarks/<script>.py ...`' line among the "
                "first five"
            )
        plot = markdown.with_suffix(".png")
        found.append(Record(markdown, match["script"], plot if plot.is_file() else None, results))
    return sorted(found, key=lambda r: (not r.current, r.name))


def protocol(script: str) -> str:
    """The first paragraph of ``benchmarks/<script>.py``'s docstring, as Markdown."""
    path = ROOT / "benchmarks" / f"{script}.py"
    if not path.is_file():
        return ""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.split("\n\n")[0].replace("``", "`")
    return " ".join(first.split())


def body(record: Record) -> list[str]:
    """The record's Markdown below its title: headings two levels down, a blank line after
    every table and before every list that follows a paragraph (Python-Markdown would read
    the line as one more row, the list as the paragraph's text)."""
    lines = record.markdown.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out: list[str] = []
    fenced = False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            heading = _HEADING.match(line)
            if heading:
                line = "#" * min(len(heading[1]) + 2, 6) + line[len(heading[1]) :]
            if out and out[-1].startswith("|") and line.strip() and not line.startswith("|"):
                out.append("")
            elif _LIST.match(line) and out and out[-1].strip() and not _ITEM.match(out[-1]):
                out.append("")
        out.append(line)
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def title(record: Record) -> str:
    """The record's own heading (its first line without the ``#``)."""
    first = record.markdown.read_text(encoding="utf-8").splitlines()[:1]
    return first[0].lstrip("#").strip() if first and first[0].startswith("#") else record.name


def image_name(record: Record) -> str:
    """The file name of the record's plot under ``docs/images/benchmarks``."""
    return record.name.replace("/", "--") + ".png"


def render(results: Path = RESULTS) -> tuple[str, dict[str, Path]]:
    """The page's Markdown and its images (file name under ``docs/images/benchmarks`` ->
    the recorded plot it copies)."""
    all_records = records(results)
    images = {image_name(r): r.plot for r in all_records if r.plot is not None}
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python benchmarks/results_page.py` from benchmarks/results/: "
        "do not edit by hand. -->",
        "",
        "Every result recorded in `benchmarks/results/`, as its benchmark wrote it: the "
        "command that produced it, the protocol, the figures and the plots. This page is "
        "generated from those records by `python benchmarks/results_page.py` (a test checks "
        "that it is up to date); the [Results](results.md) page picks the headline numbers "
        "from it. Each record's JSON twin (`benchmarks/results/<name>.json`) holds every "
        "value, per seed.",
        "",
    ]
    current = [r for r in all_records if r.current]
    earlier = [r for r in all_records if not r.current]
    order = list(SECTIONS) + sorted({r.script for r in current} - set(SECTIONS))
    for script in order:
        group = [r for r in current if r.script == script]
        if not group:
            continue
        out += [f"## {SECTIONS.get(script, f'`benchmarks/{script}.py`')}", ""]
        text = protocol(script)
        if text:
            out += [f"`benchmarks/{script}.py`: {text}", ""]
        for record in group:
            out += _record(record)
    if earlier:
        out += [
            "## Superseded and tuning runs",
            "",
            "Records kept in sub-folders of `benchmarks/results/`: earlier runs that a "
            "current record replaced, and the tuning runs whose chosen settings the current "
            "records use (`tuning/`, where the benchmarks write them; those recorded before "
            "that folder existed were moved there, so their commands, and the commands "
            "that read them, name `benchmarks/results/` itself).",
            "",
        ]
        for record in earlier:
            out += _record(record)
    return "\n".join(out).rstrip("\n") + "\n", images


def _record(record: Record) -> list[str]:
    lines = [
        f"### {record.name}",
        "",
        f"**{title(record)}** (`benchmarks/results/{record.name}.md`)",
        "",
        *([f"Command: `{record.command}`", ""] if record.command else []),
        *body(record),
        "",
    ]
    if record.plot is not None:
        lines += [f"![{record.name}]({IMAGE_URL}/{image_name(record)})", ""]
    return lines


def stale(page: Path = PAGE, images: Path = IMAGES) -> list[str]:
    """What differs between the committed page and images and what :func:`render` builds."""
    text, plots = render()
    problems = []
    if not page.is_file() or page.read_text(encoding="utf-8") != text:
        problems.append(f"{page.relative_to(ROOT)} differs from the records")
    have = {p.name for p in images.glob("*.png")} if images.is_dir() else set()
    for name in sorted(have - set(plots)):
        problems.append(f"{IMAGE_URL}/{name} has no record")
    for name, source in sorted(plots.items()):
        copy = images / name
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            problems.append(f"{IMAGE_URL}/{name} differs from {source.relative_to(ROOT)}")
    return problems


def write(page: Path = PAGE, images: Path = IMAGES) -> None:
    """Write the page and its images (removing images no record has any more)."""
    text, plots = render()
    page.write_text(text, encoding="utf-8")
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):
        if old.name not in plots:
            old.unlink()
    for name, source in plots.items():
        (images / name).write_bytes(source.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed page is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python benchmarks/results_page.py", file=sys.stderr)
        return 1 if problems else 0
    write()
    print(f"wrote {PAGE.relative_to(ROOT)} and {len(render()[1])} images in {IMAGE_URL}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
