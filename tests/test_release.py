"""The release process of docs/releasing.md holds: one version everywhere, and a changelog
in Keep a Changelog form whose newest released section is that version."""

from __future__ import annotations

import re
import tomllib

from helpers.paths import ROOT

import stamen

#: The headings Keep a Changelog 1.1.0 allows under a version.
KINDS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
_VERSION = re.compile(r"^## \[(?P<version>\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$")


def _project_version(path: str) -> str:
    return tomllib.loads((ROOT / path).read_text(encoding="utf-8"))["project"]["version"]


def test_the_version_is_one_in_every_place() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", stamen.__version__), stamen.__version__
    assert _project_version("pyproject.toml") == stamen.__version__
    assert _project_version("deploy/pyproject.toml") == stamen.__version__


def test_the_changelog_keeps_its_form() -> None:
    lines = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Changelog"
    sections = [line for line in lines if line.startswith("## ")]
    assert sections and sections[0] == "## [Unreleased]", sections[:1]
    released = [_VERSION.match(line) for line in sections[1:]]
    assert all(released), [s for s, m in zip(sections[1:], released, strict=True) if not m]
    if released:  # the newest release is the package's version
        assert released[0] and released[0]["version"] == stamen.__version__
    # What changed for a user, not how it measured (the Benchmarks page holds figures).
    figures = re.findall(
        r"\b\d+\.\d{3,}\b|\b\d+(?:\.\d+)? ?(?:ms|MiB|GiB|MB|GB)\b|±", "\n".join(lines)
    )
    assert not figures, figures
    kinds = [line[4:] for line in lines if line.startswith("### ")]
    assert set(kinds) <= set(KINDS), sorted(set(kinds) - set(KINDS))
    assert not [line for line in lines if line.startswith("#### ")]
    # Each version lists each kind at most once, in Keep a Changelog's order.
    section: list[str] = []
    for line in [*lines, "## end"]:
        if line.startswith("## "):
            order = [KINDS.index(k) for k in section]
            assert order == sorted(set(order)), section
            section = []
        elif line.startswith("### "):
            section.append(line[4:])


def test_the_cli_prints_the_version() -> None:
    from typer.testing import CliRunner

    from stamen.simulation.cli.commands import app

    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.strip() == f"stamen {stamen.__version__}"
