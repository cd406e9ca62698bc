"""An app that embeds ``Device`` and serves a matrix-factorisation release loads numpy, the
store and the release format only: never torch, Flower, Ray or Opacus (issue 26)."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers.signed_releases import small_mf_release

from stamen.privacy import generate_key, generate_signing_key

#: What the app does, in a fresh interpreter: open, apply, record, recommend, close.
SERVE = """
import sys
from stamen.client import Device
folder, release, key, public = sys.argv[1:]
with Device.open(folder, key=bytes.fromhex(key), release_key=bytes.fromhex(public)) as device:
    device.apply_release(release)
    for item in ("item-1", "item-2", "item-3"):
        device.record(item, "play")
    device.record("item-4", "rating", value=5.0)
    assert len(device.recommend(5)) == 5
print(sorted(m for m in ("torch", "flwr", "ray", "opacus") if m in sys.modules))
"""


def test_serving_an_mf_release_loads_no_torch_flower_ray_or_opacus(tmp_path) -> None:
    private, public = generate_signing_key()
    release = tmp_path / "release-000001.stamen"
    release.write_bytes(small_mf_release(1, private))
    args = [str(tmp_path / "device"), str(release), generate_key().hex(), public.hex()]
    child = subprocess.run(
        [sys.executable, "-c", SERVE, *args], check=True, capture_output=True, text=True
    )
    assert ast.literal_eval(child.stdout.strip().splitlines()[-1]) == []
