"""``Device.apply_if_newer`` and ``stamen device update`` from a releases folder served
over HTTP (a loopback static server, stopped by the test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from helpers.signed_releases import film_release
from helpers.static_server import static_server
from typer.testing import CliRunner

from stamen.simulation.cli.commands import app

runner = CliRunner()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, list[str]]]:
    """The publisher's releases folder on a static web server at 127.0.0.1, and the paths
    it was asked for."""
    film_release(tmp_path, 3)
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            asked.append(self.path)

    with static_server(tmp_path / "releases", Handler) as url:
        yield url, asked


def _json(args: list[str], code: int = 0) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.output)


def test_update_installs_what_is_newer_and_downloads_nothing_else(tmp_path, served) -> None:
    url, asked = served
    phone = str(tmp_path / "phone")
    _json(["device", "init", phone, "--release-key", str(tmp_path / "releases" / "release.pub")])
    first = _json(["device", "update", phone, url])
    assert first["updated"] and first["release"]["number"] == 3
    assert asked == ["/latest", "/release-000003.stamen"]
    asked.clear()
    again = _json(["device", "update", phone, url.rstrip("/")])
    assert again == {"updated": False, "release": 3}
    assert asked == ["/latest"]  # not newer by its name: not downloaded
    film_release(tmp_path, 7)
    newer = _json(["device", "update", phone, url])
    assert newer["release"]["number"] == 7
    # a local releases folder works the same way
    assert _json(["device", "update", phone, str(tmp_path / "releases")])["updated"] is False


def test_what_cannot_be_fetched_is_named(tmp_path, served) -> None:
    url, _ = served
    phone = str(tmp_path / "phone")
    _json(["device", "init", phone, "--release-key", str(tmp_path / "releases" / "release.pub")])
    missing = _json(["device", "update", phone, url + "nowhere/"], code=2)["error"]
    assert missing["type"] == "ReleaseError"
    assert missing["message"] == f"{url}nowhere/latest: the server answered 404 File not found"
    closed = _json(["device", "update", phone, "http://127.0.0.1:9/"], code=2)["error"]
    assert closed["message"].startswith("http://127.0.0.1:9/latest: cannot fetch")
    (Path(tmp_path) / "releases" / "latest").write_text("../secret\n")
    named = _json(["device", "update", phone, url], code=2)["error"]
    assert "names '../secret', not a release file" in named["message"]
    neither = _json(["device", "update", phone, "releases-of-nobody"], code=2)["error"]
    assert "neither a releases folder nor an http(s):// URL" in neither["message"]
