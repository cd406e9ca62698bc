"""Per-round checkpoints of the global model, the server optimiser and the run history,
and the deployment's log of rounds.

A checkpoint is one ``torch.save`` file per round (``round-00012.pt``), written atomically
and readable by the owner only (it holds the model and the history); ``latest.json`` names
the newest. A later run resumes from it when its fingerprint (the settings that must not
change mid-run: model shape, optimiser) matches. :class:`RoundsLog` is
``rounds.jsonl``: one JSON line per round of the current run, owner-only.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stamen.errors import CheckpointError
from stamen.privacy import write_atomically
from stamen.server.rounds import RoundRecord

__all__ = ["Checkpoint", "CheckpointStore", "RoundsLog"]


@dataclass(frozen=True)
class Checkpoint:
    """State after ``round`` completed rounds."""

    round: int
    server_state: dict[str, Any]
    history: list[RoundRecord]
    fingerprint: dict[str, Any]


class CheckpointStore:
    """Checkpoints in one folder, keeping the newest ``keep``."""

    def __init__(self, folder: str | Path, *, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically and prune older ones."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder / f"round-{checkpoint.round:05d}.pt"
        buffer = io.BytesIO()
        torch.save(
            {
                "round": checkpoint.round,
                "server_state": checkpoint.server_state,
                "history": [record.to_json() for record in checkpoint.history],
                "fingerprint": checkpoint.fingerprint,
            },
            buffer,
        )
        write_atomically(path, buffer.getvalue(), mode=0o600)
        pointer = {"round": checkpoint.round, "file": path.name}
        write_atomically(self.folder / "latest.json", json.dumps(pointer).encode(), mode=0o600)
        for old in sorted(self.folder.glob("round-*.pt"))[: -self.keep]:
            old.unlink()
        return path

    def clear(self) -> None:
        """Remove every checkpoint in the folder (a fresh run in a used output folder)."""
        for path in [*self.folder.glob("round-*.pt"), self.folder / "latest.json"]:
            path.unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or ``None`` when the folder holds none."""
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        try:
            name = json.loads(pointer.read_text())["file"]
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{pointer}: unreadable ({err})") from err
        return self.load(self.folder / name)

    @staticmethod
    def load(path: str | Path) -> Checkpoint:
        """Read one checkpoint file."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            raw = torch.load(path, weights_only=True)
            return Checkpoint(
                round=int(raw["round"]),
                server_state=raw["server_state"],
                history=[RoundRecord.from_json(record) for record in raw["history"]],
                fingerprint=dict(raw["fingerprint"]),
            )
        except CheckpointError as err:  # a round record it cannot read
            raise CheckpointError(f"{path}: {err}") from err
        except Exception as err:  # torch raises many types for a corrupt file
            raise CheckpointError(f"{path}: corrupt checkpoint ({err})") from err

    @staticmethod
    def check_fingerprint(checkpoint: Checkpoint, expected: dict[str, Any]) -> None:
        """Raise ``CheckpointError`` if the checkpoint belongs to a different kind of run."""
        diff = {
            k: (checkpoint.fingerprint.get(k), v)
            for k, v in expected.items()
            if checkpoint.fingerprint.get(k) != v
        }
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"checkpoint from round {checkpoint.round} does not fit this run ({detail})"
            )


class RoundsLog:
    """``<folder>/rounds.jsonl``: one JSON line per round of the current run, readable by
    the owner only. A new run first moves the previous run's lines aside, to
    ``rounds-<UTC time of its first round>.jsonl``; a resumed run appends to them."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "rounds.jsonl"

    def start(self, *, resume: bool) -> Path | None:
        """Begin the log of a run; returns where the previous run's lines went (if any)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if resume or not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with self.path.open() as handle:
            first = json.loads(handle.readline() or "{}")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(float(first.get("time", 0))))
        moved = self.path.with_name(f"rounds-{stamp}.jsonl")
        n = 1
        while moved.exists():
            n += 1
            moved = self.path.with_name(f"rounds-{stamp}-{n}.jsonl")
        os.replace(self.path, moved)
        return moved

    def append(self, line: str) -> None:
        """Add one line (durable once written: opened, appended, closed)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line + "\n")
