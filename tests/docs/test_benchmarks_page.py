"""The Benchmarks page (docs/benchmarks.md) is generated from benchmarks/results/ by
benchmarks/results_page.py: the committed page and its plots must be what the script builds
from the records now, so that a number on the site is always the recorded one."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers.paths import ROOT


@pytest.fixture(scope="module")
def results_page() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "results_page", ROOT / "benchmarks" / "results_page.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_committed_page_is_what_the_records_give(results_page: ModuleType) -> None:
    assert results_page.stale() == [], "run: python benchmarks/results_page.py"


def test_every_record_and_plot_is_on_the_page(results_page: ModuleType) -> None:
    text, images = results_page.render()
    results = ROOT / "benchmarks" / "results"
    for markdown in results.rglob("*.md"):
        if results_page.sweep_run(markdown):  # a sweep's run: the sweep's record shows it
            continue
        name = markdown.relative_to(results).with_suffix("").as_posix()
        assert f"\n### {name}\n" in text, name
        # Every table row of the record appears on the page unchanged.
        for line in markdown.read_text(encoding="utf-8").splitlines():
            if line.startswith("|"):
                assert line in text, (name, line)
    for plot in results.rglob("*.png"):
        if not results_page.sweep_run(plot):
            assert plot in images.values(), plot
    for name in images:
        assert f"](images/benchmarks/{name})" in text


def test_a_record_without_its_command_is_refused(results_page: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "run.md").write_text("# A run\n\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    with pytest.raises(results_page.RecordError, match=re.escape(str(tmp_path / "run.md"))):
        results_page.render(tmp_path)


def test_headings_move_down_and_tables_and_lists_stand_apart(
    results_page: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "run.md").write_text(
        "# A run\n\nCommand: `python benchmarks/protocol.py --seeds 0`\n\n"
        "| a |\n|---|\n| 1 |\nNotes.\n- one\n- two\n\n## Detail\n\n```\n# not a heading\n```\n",
        encoding="utf-8",
    )
    text, images = results_page.render(tmp_path)
    assert images == {}
    assert "**A run** (`benchmarks/results/run.md`)" in text
    assert "| 1 |\n\nNotes.\n\n- one\n- two\n" in text
    assert "\n#### Detail\n" in text and "\n# not a heading\n" in text
