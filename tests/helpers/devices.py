"""Devices as the tests open them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stamen.client import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.privacy import generate_key


@contextmanager
def retrieval_device(folder: Path, release_key: bytes) -> Iterator[Device]:
    """A new device in ``folder`` pinned to ``release_key`` whose pipeline is retrieval
    alone (picks in score order, no exploration: what a test can predict); closed after."""
    with Device.open(
        folder,
        key=generate_key(),
        release_key=release_key,
        pipeline=PipelineSettings.retrieval_only(),
    ) as opened:
        yield opened
