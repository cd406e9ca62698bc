"""Stamen's one ClientApp (``clientapp = "stamen.client.flower.clientapp:client_app"``).

The run config's ``runtime`` (``stamen.runtimes``) picks where the device comes from: in
``simulation`` the virtual device of the node's partition, with the protocol's held-out
evaluation (``stamen.simulation.engines.flwr_app``); in ``deployment`` the one device the
SuperNode's ``--node-config`` names (``stamen.client.flower.deployment``). Each runtime
registers a :class:`ClientRuntime`: its ``client_fn`` and the device's policy mod (SecAgg+
and what a device refuses). This module imports neither torch nor Stamen's models: the
SecAgg+ stages that only exchange keys and shares start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

from flwr.app import Context, Message
from flwr.client import Client, ClientApp
from flwr.clientapp.typing import ClientAppCallable

from stamen.runtimes import CLIENT_RUNTIMES, RUNTIME_KEY, load_runtime

__all__ = ["ClientRuntime", "client_app"]

#: ``mod(message, context, call_next)``: Flower's mod signature.
Mod = Callable[[Message, Context, ClientAppCallable], Message]


class ClientRuntime(NamedTuple):
    """A runtime's device side: how a node builds its client, and the mod every message
    goes through first (SecAgg+, the device's refusals)."""

    client_fn: Callable[[Context], Client]
    mod: Mod


@cache
def _registered(name: str) -> ClientRuntime:
    runtime = load_runtime(CLIENT_RUNTIMES, {RUNTIME_KEY: name})
    if not isinstance(runtime, ClientRuntime):
        raise TypeError(f"runtime {name!r} registered {runtime!r}, not a ClientRuntime")
    return runtime


def _runtime(context: Context) -> ClientRuntime:
    name = context.run_config.get(RUNTIME_KEY)
    if not isinstance(name, str) or not name:
        load_runtime(CLIENT_RUNTIMES, context.run_config)  # raises, naming the key
    return _registered(str(name))


def _client_fn(context: Context) -> Client:
    return _runtime(context).client_fn(context)


def _policy(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    return _runtime(context).mod(msg, context, call_next)


#: The ClientApp of every runtime (module docstring).
client_app = ClientApp(client_fn=_client_fn, mods=[_policy])
