"""``stamen release``: the operator's starting point for a deployment.

``stamen release init`` writes release 0 (the catalogue of a data set, the model named by
the configuration, its seeded initial weights), signed with the publisher's key, into a
releases folder: the deployment ServerApp starts from it and every device installs it
(``stamen device apply``).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from stamen.simulation.cli.options import settings_options

if TYPE_CHECKING:
    from stamen.simulation.config import SimulationConfig

__all__ = ["init", "release_app"]

release_app = typer.Typer(
    name="release",
    help="Signed model releases for a deployment.",
    no_args_is_help=True,
)


@release_app.command()
@settings_options(("dataset", "data_dir"))
def init(
    releases: Annotated[Path, typer.Argument(help="the releases folder (created)")],
    signing_key: Annotated[
        Path, typer.Option(help="the publisher's Ed25519 key (created owner-only if absent)")
    ],
    settings: "SimulationConfig",
) -> None:
    """Write release 0: the data set's public catalogue and the model's initial weights
    (the model, its settings and the seed from --config)."""
    from stamen.errors import DataError
    from stamen.models.bundle import ReleaseCatalog, latest_release
    from stamen.server.releases import ReleaseWriter, load_or_create_signing_key
    from stamen.simulation.engines.flower import initial_shared, release_catalog_of
    from stamen.simulation.experiment import load_for_config

    if latest_release(releases) is not None:
        raise DataError(f"{releases}: already holds releases; start a new folder")
    data, source = load_for_config(settings, say=Console(stderr=True).print)
    catalog = (
        ReleaseCatalog.from_catalog(data.catalog)
        if data.catalog is not None
        else release_catalog_of(data.interactions.n_items)
    )
    model = settings.run_model(catalog, data.interactions.n_users)
    private, public = load_or_create_signing_key(signing_key)
    writer = ReleaseWriter(releases, private_key=private, public_key=public, model=model)
    path = writer.publish(0, initial_shared(len(catalog), settings, catalog))
    public_path = signing_key.with_suffix(".pub")
    public_path.write_bytes(public)
    Console().print(
        f"release 0 of {model.name} over {len(catalog)} items ({source}) in {path}; "
        f"devices pin {public_path}"
    )
