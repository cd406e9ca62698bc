"""``stamen data inspect`` and ``stamen simulate --data``: what a run would see of a file,
a bad file's exit status 2 with its file, line and column, the flags and the ``[data]``
table agreeing, and the settings a run adjusts (printed and recorded, never silent)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from stamen.simulation.cli.commands import app
from stamen.simulation.config import Adjustment, load_config

runner = CliRunner()

#: 8 users of 4 items each (24 items in all), then a repeated pair, rated again later.
ROWS = [
    f"user-{u},item-{(u * 5 + k) % 30},{1 + (u + k) % 5},{1000 * k}"
    for u in range(8)
    for k in range(4)
]
CSV = "who,what,stars,when\n" + "\n".join(ROWS) + "\nuser-0,item-0,5,99999\n"


def _file(folder: Path, text: str = CSV) -> Path:
    path = folder / "mine.csv"
    path.write_text(text)
    return path


def test_inspect_prints_what_a_run_would_see(tmp_path) -> None:
    path = _file(tmp_path)
    result = runner.invoke(
        app,
        ["data", "inspect", str(path), "--user-col", "who", "--item-col", "what"]
        + ["--rating-col", "stars", "--time-col", "when", "--min-rating", "2"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for line in (
        "mine.csv: what `stamen simulate --data` would see",
        "33 rows read (csv); 8 users (string ids), 24 items (string ids)",
        "duplicates merged: 1 rows (the row with the latest time kept",
        "rating below --min-rating 2",
        "timestamps      1970-01-01 00:00:00 to 1970-01-02 03:46:39 UTC",
        "history length  min",
        "density",
        "evaluated users 8; train only 0",
        "8 evaluated users have fewer than 99 items they never touched",
    ):
        assert line in result.output, result.output


def test_inspect_reads_the_data_table_of_a_config_file(tmp_path) -> None:
    path = _file(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text('[data]\nuser-col = "who"\nitem-col = "what"\nmin-user-interactions = 4\n')
    result = runner.invoke(app, ["data", "inspect", str(path), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "0 rows, 0 users, 0 items: k-core: users with fewer than 4 positives" in result.output


def test_inspect_of_a_bad_file_exits_2_naming_file_line_and_column(tmp_path) -> None:
    path = _file(tmp_path, "who,what,stars\na,b,5\na,c,lots\n")
    args = ["data", "inspect", str(path), "--user-col", "who", "--item-col", "what"]
    result = runner.invoke(app, [*args, "--rating-col", "stars"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert f"error: {path}, line 3, field 'stars': expected a number, found 'lots'" in result.output
    result = runner.invoke(app, [*args, "--rating-col", "rating"], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "no column 'rating' (rating) in the header" in result.output
    result = runner.invoke(app, ["data", "inspect", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "needs its user and item columns" in result.output


def test_simulate_refuses_a_file_and_a_named_data_set_together(tmp_path) -> None:
    path = _file(tmp_path)
    out = tmp_path / "run"
    cols = ["--user-col", "who", "--item-col", "what", "--output", str(out)]
    result = runner.invoke(
        app,
        ["simulate", "--data", str(path), "--dataset", "ml-100k", *cols],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2
    assert "give a data file (--data; path in [data]) or a named data set" in result.output
    result = runner.invoke(app, ["simulate", "--user-col", "who"], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "user-col given without a data file" in result.output
    bad = _file(tmp_path, "who,what\nx,\n")
    result = runner.invoke(app, ["simulate", "--data", str(bad), *cols], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"{bad}, line 2, field 'what': empty id" in result.output
    assert not out.exists()  # nothing trained, no output folder


def test_the_flags_and_the_data_table_give_the_same_settings(tmp_path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\npath = "mine.csv"\nuser-col = "who"\nitem-col = "what"\nrating-col = "stars"\n'
        'min-rating = 4\nformat = "csv"\n'
    )
    from_file = load_config(config)
    from_flags = load_config(
        None,
        {
            "data": {
                "path": "mine.csv",
                "user_col": "who",
                "item_col": "what",
                "rating_col": "stars",
                "min_rating": 4,
                "format": "csv",
            }
        },
    )
    assert from_file == from_flags and from_file.dataset is None
    assert from_file.model_dump(mode="json")["data"]["path"] == "mine.csv"


def test_a_cohort_above_the_population_is_an_adjustment() -> None:
    config = load_config(None, {"clients_per_round": 50, "eval_clients": 30})
    assert config.adjustments(devices=20, evaluated=18) == [
        Adjustment(
            "clients-per-round",
            50,
            20,
            "the data has 20 users (one device each): every device in every round",
        ),
        Adjustment("eval-clients", 30, 18, "only 18 devices hold held-out items"),
    ]
    assert load_config().adjustments(devices=943, evaluated=943) == []
    als = load_config(None, {"algorithm": "als"}).adjustments(devices=100, evaluated=100)
    assert {a.setting for a in als} >= {"rounds", "clients-per-round"}
    assert all(a.reason == "private ALS fixes it (see [als])" for a in als)
