"""``stamen device``: the walk-through of the README on a small signed release."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.signed_releases import film_release
from typer.testing import CliRunner

from stamen.errors import DataError
from stamen.models import DataFormatError
from stamen.privacy import BudgetExceededError, DecryptionError, SignatureError
from stamen.simulation.cli import commands as cli
from stamen.simulation.cli.commands import app
from stamen.simulation.cli.event_files import PresetFile

runner = CliRunner()


@pytest.fixture
def release(tmp_path):
    return film_release(tmp_path, 3), tmp_path / "releases" / "release.pub"


def _ok(args: list[str]) -> str:
    # a wide console, so that rich does not wrap a long temporary path inside a phrase
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_walk_through(tmp_path, release) -> None:
    bundle, public = release
    folder = tmp_path / "phone"
    events = tmp_path / "u.data"
    events.write_text("7\t3\t5\t100\n8\t4\t1\t101\n7\t5\t4\t102\n")
    assert "wrote a new key" in _ok(["device", "init", str(folder), "--release-key", str(public)])
    key_file = tmp_path / "phone.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    assert not any(p.name.endswith(".key") for p in folder.iterdir())
    assert "imported 2 events" in _ok(["device", "import", str(folder), str(events), "--user", "7"])
    _ok(["device", "record", str(folder), "9", "play"])
    assert "installed release 3" in _ok(["device", "apply", str(folder), str(bundle)])
    table = _ok(["device", "recommend", str(folder), "--k", "5"])
    assert "Because you" in table and "Film" in table
    exported = json.loads(_ok(["device", "export", str(folder)]))
    assert [e["item"] for e in exported["events"]] == ["3", "5", "9"]
    assert sorted(exported["state"]["items"]) == ["3", "5", "9"]
    _ok(["device", "forget", str(folder), "--yes"])
    assert list(folder.iterdir()) == [] and key_file.is_file()
    # init again takes the existing key instead of overwriting it
    assert "took the key" in _ok(["device", "init", str(folder), "--release-key", str(public)])


def test_errors_name_the_problem(tmp_path, release) -> None:
    _, public = release
    folder = tmp_path / "phone"
    inside = runner.invoke(
        app,
        [
            "device",
            "init",
            str(folder),
            "--release-key",
            str(public),
            "--key-file",
            str(folder / "k"),
        ],
    )
    assert isinstance(inside.exception, DataError) and "outside" in str(inside.exception)
    missing = runner.invoke(app, ["device", "recommend", str(tmp_path / "nowhere")])
    assert isinstance(missing.exception, DataError) and "no device here" in str(missing.exception)


def _stamen(*args: str) -> subprocess.CompletedProcess:
    """Run the ``stamen`` script's entry point in a fresh interpreter, as a shell would."""
    entry = "from stamen.simulation.cli.commands import main; main()"
    return subprocess.run(
        [sys.executable, "-c", entry, *args], capture_output=True, text=True, timeout=120
    )


def _one_line_error(run: subprocess.CompletedProcess, *names: str) -> str:
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "Traceback" not in output and run.stdout == "", output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert all(name in lines[0] for name in names), output
    return lines[0]


def test_privacy_errors_are_one_line_command_errors(tmp_path, release) -> None:
    """A wrong store key and a tampered release end the command with exit status 2 and
    one line naming the files, not a traceback (through the real entry point)."""
    bundle, public = release
    folder = tmp_path / "phone"
    _ok(["device", "init", str(folder), "--release-key", str(public)])
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(range(32)))
    line = _one_line_error(
        _stamen("device", "recommend", str(folder), "--key-file", str(wrong)),
        str(folder / "device.db"),
        str(wrong),
    )
    assert "wrong key" in line
    tampered = tmp_path / "tampered.stamen"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    line = _one_line_error(_stamen("device", "apply", str(folder), str(tampered)), str(tampered))
    assert "signature does not verify" in line
    # the device is unharmed: the genuine release still installs
    assert "installed release 3" in _ok(["device", "apply", str(folder), str(bundle)])


@pytest.mark.parametrize("error", [BudgetExceededError, DecryptionError, SignatureError])
def test_main_turns_every_privacy_error_into_exit_status_2(error, monkeypatch, capsys) -> None:
    def failing_app() -> None:
        raise error("/some/file: what went wrong")

    monkeypatch.setattr(cli, "app", failing_app)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: /some/file: what went wrong\n"


def test_event_files_name_file_line_and_field(tmp_path) -> None:
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t5\t100\n1\t3\t9\t101\n")
    with pytest.raises(DataFormatError, match=r"u\.data, line 2, field 'rating': 9 is above"):
        list(PresetFile(bad))
    several = tmp_path / "ratings.csv"
    several.write_text("userId,movieId,rating,timestamp\n1,2,4.5,10\n2,2,3.0,11\n")
    with pytest.raises(DataError, match="holds several users; choose one with --user"):
        list(PresetFile(several))
    assert list(PresetFile(several, user=2)) == [
        {"item": "2", "kind": "rating", "value": 3.0, "at": 11.0}
    ]
    with pytest.raises(DataError, match="no events for user 3"):
        list(PresetFile(several, user=3))
    with pytest.raises(DataError, match="unknown layout"):
        PresetFile(tmp_path / "u.data", layout="events.json")


def test_import_is_one_transaction_and_json_reports_it(tmp_path, release) -> None:
    """A bad last row of a data set's file leaves nothing stored, named by file, line and
    field; with --json every command prints one object, errors included (exit 2)."""
    _, public = release
    folder = tmp_path / "phone"
    _ok(["device", "init", str(folder), "--release-key", str(public), "--json"])
    events = tmp_path / "u.data"
    rows = [f"7\t{item}\t4\t{100 + item}" for item in range(1, 2500)]
    events.write_text("\n".join([*rows, "7\t9\t4\tsoon"]) + "\n")
    bad = runner.invoke(app, ["device", "import", str(folder), str(events), "--json"])
    assert bad.exit_code == 2, bad.output
    error = json.loads(bad.output)["error"]
    assert error["type"] == "DataFormatError"
    assert "u.data, line 2500, field 'timestamp'" in error["message"]
    assert json.loads(_ok(["device", "export", str(folder), "--json"]))["events"] == []
    events.write_text("\n".join(rows) + "\n")
    done = json.loads(_ok(["device", "import", str(folder), str(events), "--json"]))
    assert done == {
        "file": str(events),
        "stored": 2499,
        "read": 2499,
        "ignored_columns": [],
        "events": 2499,
    }
    own = tmp_path / "mine.csv"
    own.write_text("movie_id,when,stars,user_id\nm1,2020-01-01T10:00:00Z,5,u\nm2,1600000000,2,u\n")
    args = ["device", "import", str(folder), str(own), "--column", "item=movie_id"]
    args += ["--column", "at=when", "--column", "value=stars", "--kind", "rating", "--json"]
    done = json.loads(_ok(args))
    assert (done["stored"], done["ignored_columns"], done["events"]) == (2, ["user_id"], 2501)
    text = _ok(
        [
            "device",
            "import",
            str(folder),
            str(own),
            "--column",
            "item=movie_id",
            "--column",
            "at=when",
            "--column",
            "value=stars",
            "--kind",
            "rating",
        ]
    )
    assert "columns not read: user_id" in text
    recorded = json.loads(
        _ok(["device", "record", str(folder), "m3", "play", "--id", "e1", "--json"])
    )
    assert recorded["event"]["item"] == "m3" and recorded["events"] == 2504
    again = json.loads(_ok(["device", "record", str(folder), "m3", "play", "--id", "e1", "--json"]))
    assert again["events"] == 2504  # a retry with the same id stores nothing
    picks = json.loads(_ok(["device", "recommend", str(folder), "--k", "3", "--json"]))
    assert picks == {"release": None, "picks": []}
    wrong = runner.invoke(app, ["device", "import", str(folder), str(own), "--json"])
    assert (
        wrong.exit_code == 2
        and "no column ['item', 'kind']" in json.loads(wrong.output)["error"]["message"]
    )
    refused = runner.invoke(app, ["device", "forget", str(folder), "--json"])
    assert refused.exit_code == 2 and "--yes" in json.loads(refused.output)["error"]["message"]
    assert json.loads(_ok(["device", "forget", str(folder), "--yes", "--json"])) == {
        "forgotten": str(folder)
    }


def test_a_misspelt_command_is_suggested_once() -> None:
    result = runner.invoke(app, ["simulat"])
    assert result.exit_code == 2
    assert result.output.count("Did you mean 'simulate'?") == 1, result.output
