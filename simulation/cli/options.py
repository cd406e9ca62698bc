"""The settings' command-line flags: each one a field path of ``SimulationConfig`` and a
typer option.

:data:`FLAGS` is the one table. A flag is spelled as its run-config key
(``stamen.server.run_config.run_config_key``: ``--clients-per-round``, ``--dp``,
``--secure-aggregation``) unless it lists the command line's own spellings (``--rounds``,
``--epsilon``). :func:`settings_options` gives a command ``--config`` and the flags it
names, and hands it the ``SimulationConfig`` of the defaults, the TOML file and the flags:
one error lists every problem, the flags named as written; a command may also take a
field as a positional argument (``stamen data inspect FILE``). Nothing here imports the
models (``stamen --help`` loads no torch); ``tests/simulation/test_config.py`` checks that each
flag's type is its field's.
"""

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from stamen.errors import StamenError
from stamen.server.run_config import Given, run_config_key

__all__ = ["DATA_FLAGS", "FLAGS", "Flag", "settings_options"]


@dataclass(frozen=True)
class Flag:
    """A settings flag: the value's type, its help, its spellings where they are not its
    run-config key, and the other fields that giving it sets."""

    type: type
    help: str
    names: tuple[str, ...] = ()
    sets: tuple[tuple[str, Any], ...] = ()

    def spellings(self, path: str) -> tuple[str, ...]:
        """The names of the flag of ``path``: those it lists, else its run-config key."""
        return self.names or (f"--{run_config_key(path)}",)

    def option(self, path: str) -> Any:
        """The typer annotation of the flag of ``path`` (unset: ``None``)."""
        names = self.spellings(path)
        if self.type is bool:  # --x / --no-x
            names = tuple(f"{n}/--no-{n.removeprefix('--')}" for n in names)
        return Annotated[self.type | None, typer.Option(*names, help=self.help)]


_RECORD_DP = (("record_dp.enabled", True),)  # a record-level DP flag turns DP-SGD on

#: Every settings flag, by field path, in the order ``--help`` lists them.
FLAGS: dict[str, Flag] = {
    "dataset": Flag(str, "ml-100k (the default), ml-1m, …, lastfm-2k or synthetic"),
    "data.path": Flag(
        Path,
        "your own interactions file (CSV, TSV, JSON lines, Parquet): not --dataset",
        ("--data",),
    ),
    "data.format": Flag(str, "csv, tsv, jsonl or parquet \\[default: by suffix]", ("--format",)),
    "data.user_col": Flag(str, "the data file's column of user ids", ("--user-col",)),
    "data.item_col": Flag(str, "the data file's column of item ids", ("--item-col",)),
    "data.rating_col": Flag(
        str,
        "column of explicit ratings, any scale (a repeated pair keeps its latest row)",
        ("--rating-col",),
    ),
    "data.weight_col": Flag(
        str, "column of implicit counts (summed over a repeated pair)", ("--weight-col",)
    ),
    "data.time_col": Flag(
        str, "column of times: epoch seconds or ISO 8601 (none: random hold-out)", ("--time-col",)
    ),
    "data.min_rating": Flag(
        float,
        "a positive's least rating (or summed weight) \\[default: every row]",
        ("--min-rating",),
    ),
    "data.min_user_interactions": Flag(
        int, "k-core: users with fewer positives are dropped", ("--min-user-interactions",)
    ),
    "data.min_item_interactions": Flag(
        int, "k-core: items with fewer positives are dropped", ("--min-item-interactions",)
    ),
    "data.items_path": Flag(
        Path,
        "a file of item metadata, one row per item (CSV, TSV, JSON lines, Parquet)",
        ("--items",),
    ),
    "data.items_format": Flag(
        str, "the items file's format \\[default: by suffix]", ("--items-format",)
    ),
    "data.items_id_col": Flag(str, "the items file's column of item ids", ("--items-id-col",)),
    "data.title_col": Flag(str, "the items file's column of titles", ("--title-col",)),
    "data.genres_col": Flag(str, "the items file's column of genres or tags", ("--genres-col",)),
    "data.genres_sep": Flag(
        str, "what separates the genres in a cell \\[default: |]", ("--genres-sep",)
    ),
    "data.year_col": Flag(
        str, "the items file's column of release years or times", ("--year-col",)
    ),
    "model": Flag(
        str,
        "model family: mf, two-tower, sequential, pfedrec or fedrap (\\[two-tower], "
        "\\[sequential], \\[pfedrec], \\[fedrap] sections)",
    ),
    "algorithm": Flag(str, "fedavg (DP-FedAvg under --dp) or als (private ALS; \\[als] section)"),
    "engine": Flag(
        str,
        "flower (Flower's simulation engine, the default) or batched (the same cohorts and "
        "arithmetic vectorised in this process: MF, two-tower, sequential, PFedRec or FedRAP "
        "FedAvg, fast)",
    ),
    "rounds": Flag(int, "federated rounds", ("--rounds",)),
    "clients_per_round": Flag(int, "devices sampled per round"),
    "seed": Flag(int, "seed of the split, sampling and init"),
    "eval_every": Flag(int, "federated evaluation period (0: last round)"),
    "data_dir": Flag(Path, "folder holding the data sets \\[env STAMEN_DATA_DIR]"),
    "output": Flag(Path, "folder for results.json, metrics.png, checkpoints"),
    "resume": Flag(bool, "continue from the latest checkpoint in --output"),
    "secagg.enabled": Flag(bool, "aggregate updates with Flower SecAgg+ (default: on)"),
    "dp.mode": Flag(str, "user-level DP: off, central or distributed"),
    "dp.target_epsilon": Flag(
        float, "target ε: sizes the noise, stops the run at the budget", ("--epsilon",)
    ),
    "dp.noise_multiplier": Flag(float, "DP noise multiplier z", ("--noise-multiplier",)),
    "dp.clip_norm": Flag(float, "DP clip norm C of a device update", ("--clip-norm",)),
    "record_dp.noise_multiplier": Flag(
        float,
        "record-level DP-SGD on devices: noise multiplier z",
        ("--record-dp-noise",),
        _RECORD_DP,
    ),
    "record_dp.max_grad_norm": Flag(
        float, "record-level DP-SGD: per-record clip norm C", ("--record-dp-clip",), _RECORD_DP
    ),
    "record_dp.sample_rate": Flag(
        float,
        "record-level DP-SGD: Poisson rate q of records per step",
        ("--record-dp-rate",),
        _RECORD_DP,
    ),
    "protocol.split": Flag(
        str,
        "held-out items per user: leave-one-out (one test and one validation item, the "
        "default) or ratio (--test-ratio of the user's items each)",
        ("--split",),
    ),
    "protocol.test_ratio": Flag(
        float,
        "--split ratio: the share of each user's items held out for test, and again for "
        "validation, above 0 and below 0.5 \\[default: 0.2]",
        ("--test-ratio",),
    ),
    "protocol.holdout": Flag(
        str,
        "held-out items: temporal (each user's latest, the default) or random",
        ("--holdout",),
    ),
    "protocol.negatives": Flag(
        int, "sampled negatives per evaluated user \\[default: 99]", ("--negatives",)
    ),
    "ray_address": Flag(
        str,
        "a running Ray cluster (HOST:PORT of `ray start --head`) to run the devices on; "
        "--output must be on a file system every Ray node sees \\[default: a local Ray]",
    ),
}

#: The flags of a data file's columns and filters (``stamen data inspect`` takes these).
DATA_FLAGS: tuple[str, ...] = tuple(p for p in FLAGS if p.startswith("data.") and p != "data.path")

_CONFIG = Annotated[Path | None, typer.Option(help="TOML file of settings (flags override it)")]


def _param(path: str) -> str:
    return path.replace(".", "__")


def _flags_given(
    paths: Iterable[str], values: dict[str, Any], arguments: Mapping[str, str]
) -> Given:
    given: dict[str, Any] = {}
    names: dict[str, str] = {}
    for path, metavar in arguments.items():
        given[path], names[path] = values.pop(metavar.lower()), metavar
    for path in paths:
        value = values.pop(_param(path))
        if value is None:
            continue
        flag = FLAGS[path]
        name = flag.spellings(path)[0]
        for also, implied in flag.sets:
            given.setdefault(also, implied)
            names.setdefault(also, name)
        given[path], names[path] = value, name
    return Given.flat(given, names, source="command line")


def settings_options(
    paths: Iterable[str] = FLAGS,
    *,
    arguments: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Gives a command ``--config``, the flags of ``paths`` and, first, a positional
    argument for each field path of ``arguments`` (shown as its metavar, e.g.
    ``{"data.path": "FILE"}``); the command takes ``settings`` (a ``SimulationConfig``)
    instead. A ``StamenError`` the command raises, or that the settings have, ends it with
    its message and exit status 2."""
    paths = tuple(paths)
    arguments = dict(arguments or {})

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        positional = [
            inspect.Parameter(
                metavar.lower(),
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=Annotated[
                    FLAGS[path].type,
                    typer.Argument(metavar=metavar, help=FLAGS[path].help, show_default=False),
                ],
            )
            for path, metavar in arguments.items()
        ]
        added = [
            inspect.Parameter(
                _param(path), keyword, default=None, annotation=FLAGS[path].option(path)
            )
            for path in paths
        ]
        added.append(inspect.Parameter("config", keyword, default=None, annotation=_CONFIG))
        params = (
            positional
            + [p for p in own if p.kind != keyword]
            + added
            + [p for p in own if p.kind == keyword]
        )

        def run(**values: Any) -> None:
            from stamen.simulation.config import load_config

            config = values.pop("config")
            flags = _flags_given(paths, values, arguments)
            try:
                command(settings=load_config(config, flags), **values)
            except StamenError as err:
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(code=2) from None

        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(run, attribute, getattr(command, attribute))
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
