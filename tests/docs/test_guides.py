"""Guides that cannot rot: every fenced code block of the README and the guides runs here,
or the page says, right above it, why not.

The convention (summed up in the README's Development section):

- A ``python`` block runs. A page's Python blocks run in order in one namespace, in a
  fresh working directory, over the names the page assumes (:func:`app_names`: the
  keystore's key ``key_from_keystore``, the publisher's ``publisher_key`` and the signed
  release file the page names).
- A ``bash`` block runs as one ``bash -eu`` script in a fresh working directory with the
  virtualenv's ``bin`` first on ``PATH`` (as after ``source .venv/bin/activate``); every
  command must succeed. It is marked ``slow`` (each ``stamen`` command starts Python and
  its libraries). The files it reads that a reader brings (``their.csv``, ``movies.csv``)
  are made here.
- A ``toml`` block is a ``stamen simulate --config`` file: it must load.
- Smaller settings than the page's are allowed only where the page says so, in a sentence
  after the block: "The tests run `stamen simulate` here with `--rounds 2`" (the flags are
  set on every command of the block that starts with the quoted command).
- Any other block, or one that cannot run here, carries an HTML comment on the line above
  its opening fence: ``<!-- not run: REASON -->``; or ``<!-- run until "TEXT": REASON -->``
  to run a shell block's commands before the first one starting with TEXT.

:data:`PAGES` names the pages whose every block must be run or marked (an unmarked block
that no runner takes fails :func:`test_every_block_runs_or_says_why_not`): the README and
every page of the docs site.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.paths import REAL_DATA, ROOT

#: Pages whose every block must run or say why not: the README and every page of the site
#: but the generated Benchmarks page (its records' commands are the benchmarks themselves).
PAGES = (
    "README.md",
    *sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "docs").rglob("*.md")
        if p.name != "benchmarks.md"
    ),
)
RUNNERS = ("python", "bash", "toml")

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>\S.*?) -->$")
_RUN_UNTIL = re.compile(r'^<!-- run until "(?P<stop>[^"]+)": (?P<reason>\S.*?) -->$')
_SMALL = re.compile(
    r"[Tt]he tests run `(?P<command>[^`]+)` (?:here |above )?with `(?P<flags>[^`]+)`"
)


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page, with what the page says about running it."""

    page: str
    line: int
    lang: str
    code: str
    not_run: str | None
    stop: str | None
    after: str  # the page's text after the block, up to the next block or heading

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` (relative to the repository root)."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, fence = i, match["fence"]
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        code = "\n".join(lines[start + 1 : i]) + "\n"
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        not_run, until = _NOT_RUN.match(above.strip()), _RUN_UNTIL.match(above.strip())
        after = []
        for line in lines[i + 1 :]:
            if _FENCE.match(line) or line.startswith("#"):
                break
            after.append(line)
        found.append(
            Block(
                page=page,
                line=start + 1,
                lang=match["lang"],
                code=code,
                not_run=not_run["reason"] if not_run else None,
                stop=until["stop"] if until else None,
                after=" ".join(" ".join(after).split()),
            )
        )
        i += 1
    return found


def _runs(block: Block) -> bool:
    return block.not_run is None and block.lang in RUNNERS


# ---------------------------------------------------------------------------------------
# Every block is run or says why not


@pytest.mark.parametrize("page", PAGES)
def test_every_block_runs_or_says_why_not(page: str) -> None:
    found = blocks(page)
    unmarked = [b.id for b in found if b.not_run is None and b.lang not in RUNNERS]
    assert not unmarked, (
        f"blocks no test runs and that do not say why: {unmarked}; put "
        "'<!-- not run: REASON -->' on the line above the opening fence (tests/docs/"
        "test_guides.py describes the convention)"
    )
    until = [b.id for b in found if b.stop is not None and b.lang != "bash"]
    assert not until, f"'run until' marks a shell block only: {until}"


def test_the_convention_is_read_as_written(tmp_path: Path) -> None:
    """A marked block is skipped with its reason; a sentence after a block shrinks it."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n<!-- not run: needs a SuperLink -->\n```bash\nflwr run .\n```\n\n"
        '<!-- run until "flwr": starts its own servers -->\n```bash\nstamen x\nflwr run\n```\n'
        "\n```bash\nstamen simulate --rounds 64 \\\n  --output x   # a run\n```\n\n"
        "The tests run `stamen simulate` here with `--rounds 2 --clients-per-round 8`.\n",
        encoding="utf-8",
    )
    first, second, third = blocks(str(page))
    assert first.not_run == "needs a SuperLink" and not _runs(first)
    assert second.stop == "flwr" and _runs(second)
    assert _script(second) == "stamen x\n"
    assert _script(third) == "stamen simulate --rounds 2 --output x --clients-per-round 8\n"


# ---------------------------------------------------------------------------------------
# Python blocks


def _python_pages() -> Iterator[str]:
    for page in PAGES:
        if any(b.lang == "python" and _runs(b) for b in blocks(page)):
            yield page


@pytest.fixture
def app_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What an app's code has before the guide's lines: its store key from the keystore,
    the publisher's public key, and release 16 (a small MF model whose catalogue holds
    MovieLens' ids 50 and 181, titled as there) at the path the guide names, in the
    working directory; for the experiments guide, the device's experiment secret and the
    app's pipeline settings."""
    from helpers.signed_releases import publish_signed

    from stamen.client.pipeline.recommend import PipelineSettings
    from stamen.models import LocalSettings, ReleaseCatalog
    from stamen.models.mf.model import MFModel

    n = 200
    ids = [str(i) for i in range(1, n + 1)]
    titles = [f"Film {i} (1995)" for i in ids]
    titles[49], titles[180] = "Star Wars (1977)", "Return of the Jedi (1983)"
    model = MFModel(LocalSettings(dim=8), ReleaseCatalog.build(ids, titles=titles))
    items = np.random.default_rng(0).normal(0, 0.3, (n, 8)).astype(np.float32)
    release, public = publish_signed(
        tmp_path / "publisher", model, [items, np.zeros(n, np.float32)], 16
    )
    work = tmp_path / "app"
    work.mkdir()
    shutil.copy(release, work / "release-000016.stamen")
    monkeypatch.chdir(work)
    return {
        "key_from_keystore": bytes(range(32)),
        "publisher_key": public,
        "secret": bytes(range(100, 132)),
        "base_settings": PipelineSettings(),
    }


def _ten_picks(page: str, namespace: dict[str, Any], printed: list[str]) -> None:
    """The device guides print ten picks, each "item score reason"; the app developer
    guide's comment promises a "Because you rated" reason for the 5-star rating."""
    assert len(printed) == 10, printed
    assert all(line.split()[0] not in {"50", "181"} for line in printed), printed
    assert any("Because you rated Star Wars (1977)" in line for line in printed), printed


def _an_arm(page: str, namespace: dict[str, Any], printed: list[str]) -> None:
    """The experiments guide's device assigns itself an arm, the same one every time, and
    serves that arm's settings."""
    from stamen.client.device.experiments import assign

    experiment, arm = namespace["experiment"], namespace["arm"]
    assert arm == assign(experiment, device_secret=namespace["secret"])
    explore = {0: namespace["base_settings"].explore, 1: 0.1}[arm]
    assert namespace["settings"].explore == explore


#: What each page's Python blocks must have done, checked after they run.
PYTHON_CHECKS = {
    "README.md": _ten_picks,
    "docs/app-developer.md": _ten_picks,
    "docs/experiments.md": _an_arm,
}


@pytest.mark.parametrize("page", list(_python_pages()))
def test_python_blocks_run(
    page: str, app_names: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {"__name__": "__guide__", **app_names}
    try:
        for block in blocks(page):
            if block.lang == "python" and _runs(block):
                exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102
    finally:
        device = namespace.get("device")
        if device is not None:
            device.close()
    assert page in PYTHON_CHECKS, f"{page}: say in PYTHON_CHECKS what its blocks must do"
    PYTHON_CHECKS[page](page, namespace, capsys.readouterr().out.splitlines())


# ---------------------------------------------------------------------------------------
# TOML blocks


def _toml_blocks() -> list[Block]:
    return [b for p in PAGES for b in blocks(p) if b.lang == "toml" and _runs(b)]


@pytest.mark.parametrize("block", _toml_blocks(), ids=lambda b: b.id)
def test_toml_blocks_load_as_config_files(block: Block, tmp_path: Path) -> None:
    from stamen.simulation.config import load_config

    path = tmp_path / "run.toml"
    path.write_text(block.code, encoding="utf-8")
    config = load_config(path)
    if "These are the defaults" in block.after:
        given = tomllib.loads(block.code)
        defaults = load_config().model_dump(by_alias=True)
        example = load_config(ROOT / "examples" / "ml-100k.toml").model_dump(by_alias=True)
        assert config.model_dump(by_alias=True) == defaults
        assert example == defaults
        assert given  # the block sets something


# ---------------------------------------------------------------------------------------
# Shell blocks


def _script(block: Block) -> str:
    """The block's commands as the test runs them: up to its ``run until`` command, with
    the smaller settings the page states."""
    lines: list[str] = []
    for raw in block.code.replace("\\\n", " ").splitlines():
        if block.stop is not None and raw.lstrip().startswith(block.stop):
            break
        lines.append(raw)
    for small in _SMALL.finditer(block.after):
        command, flags = small["command"], small["flags"].split()
        pairs = []
        for k, flag in enumerate(flags):
            if flag.startswith("--"):
                value = flags[k + 1] if k + 1 < len(flags) else None
                pairs.append((flag, None if value is None or value.startswith("--") else value))
        changed = False
        for n, line in enumerate(lines):
            if not line.lstrip().startswith(command):
                continue
            line = re.sub(r"\s+#\s.*$", "", line)
            for flag, value in pairs:
                pattern = re.compile(rf"(\s){re.escape(flag)}(?:=|\s+)(?!--)\S+")
                if value is not None and pattern.search(line):
                    line = pattern.sub(rf"\g<1>{flag} {value}", line)
                elif f" {flag}" not in line:
                    line += f" {flag}" + (f" {value}" if value is not None else "")
            lines[n] = " ".join(line.split())
            changed = True
        assert changed, f"{block.id}: the page shrinks `{command}` but no command starts so"
    return "\n".join(lines) + "\n"


def _shell_blocks() -> list[Block]:
    return [b for p in PAGES for b in blocks(p) if b.lang == "bash" and _runs(b)]


def _their_csv(path: Path) -> None:
    """A reader's own interactions file, as the guides' `--data their.csv` commands read
    it: 40 people, 200 items, 25 events each, ratings 1-5 and times."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,movie_id,rating,timestamp"]
    for user in range(40):
        for k, item in enumerate(rng.choice(200, 25, replace=False)):
            rating = int(rng.choice([2, 3, 4, 5], p=[0.1, 0.2, 0.35, 0.35]))
            rows.append(f"u{user},i{item},i{item},{rating},{1_600_000_000 + 3600 * k + user}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _their_movies_csv(path: Path) -> None:
    """The items file of :func:`_their_csv`'s items, as the guides' `--items movies.csv`
    commands read it: a title, genres joined with `|` and a release date for each."""
    genres = ("Comedy", "Drama", "Action", "Romance")
    rows = ["movie_id,title,genres,released"]
    for item in range(200):
        pair = f"{genres[item % 4]}|{genres[(item + 1) % 4]}"
        rows.append(f"i{item},Film {item},{pair},{1950 + item % 70}-06-01")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("block", _shell_blocks(), ids=lambda b: b.id)
def test_shell_blocks_run(block: Block, tmp_path: Path) -> None:
    script = _script(block)
    if "ml-100k" in script:
        if not (REAL_DATA / "ml-100k").is_dir():
            pytest.skip(f"real data not present: {REAL_DATA / 'ml-100k'}")
    # The reader's repository root (its Flower app for deployments, `deploy/`):
    # ../shared/data beside it holds the data sets.
    work = tmp_path / "main"
    work.mkdir()
    shutil.copytree(ROOT / "deploy", work / "deploy")
    (tmp_path / "shared").mkdir()
    if REAL_DATA.is_dir():
        (tmp_path / "shared" / "data").symlink_to(REAL_DATA.resolve())
    _their_csv(work / "their.csv")
    _their_movies_csv(work / "movies.csv")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "STAMEN_DATA_DIR": str(tmp_path / "shared" / "data"),
    }
    # A session of its own, so that the servers a block starts in the background (the
    # operator's walk-through) are stopped with it, whether it passed or not; its output
    # goes to files, which those servers may hold open after the block has ended.
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        shell = subprocess.Popen(
            ["bash", "-eu", "-o", "pipefail", "-c", script],
            cwd=work,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            shell.wait(timeout=1500)
        finally:
            _stop_session(shell)
    assert shell.returncode == 0, (
        f"{block.id} failed ({shell.returncode}):\n{script}\n--- stdout\n"
        f"{out.read_text()[-4000:]}\n--- stderr\n{err.read_text()[-4000:]}"
    )


def _stop_session(shell: subprocess.Popen[bytes]) -> None:
    """Stop every process of the block's session: SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(shell.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(shell.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    if shell.poll() is None:
        shell.kill()
    shell.wait()
