"""An app that embeds ``Device`` and serves a matrix-factorisation release loads numpy, the
store and the release format only: never torch, Flower, Ray, Opacus, SciPy or pydantic
(issue 26)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib

from helpers.paths import ROOT
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
heavy = ("torch", "flwr", "ray", "opacus", "scipy", "pydantic")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_serving_an_mf_release_loads_no_torch_flower_ray_opacus_scipy_or_pydantic(tmp_path) -> None:
    private, public = generate_signing_key()
    release = tmp_path / "release-000001.stamen"
    release.write_bytes(small_mf_release(1, private))
    args = [str(tmp_path / "device"), str(release), generate_key().hex(), public.hex()]
    child = subprocess.run(
        [sys.executable, "-c", SERVE, *args], check=True, capture_output=True, text=True
    )
    assert ast.literal_eval(child.stdout.strip().splitlines()[-1]) == []


#: The import name of each of pyproject.toml's dependencies (distribution -> module).
MODULES = {
    "flwr": "flwr",
    "torch": "torch",
    "opacus": "opacus",
    "numpy": "numpy",
    "scipy": "scipy",
    "cryptography": "cryptography",
    "grpcio": "grpc",
    "pydantic": "pydantic",
    "typer": "typer",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "safetensors": "safetensors",
    "sqlcipher3-binary": "sqlcipher3",
    "threadpoolctl": "threadpoolctl",
    "prometheus-client": "prometheus_client",
}

#: A finder that makes ``BLOCKED`` (and Ray, which Flower's simulation extra brings)
#: unimportable, as in an environment where they were never installed.
BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
"""


def _requirements(lines: list[str]) -> dict[str, str]:
    """Distribution name -> its specifier, for each requirement of ``lines`` (comments and
    blank lines skipped, extras dropped)."""
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = re.match(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?", line)
            assert name is not None, line
            found[re.sub(r"\[.*\]", "", name[0])] = line[len(name[0]) :]
    return found


def test_the_device_only_install_pins_as_pyproject_does_and_serves_without_the_rest(
    tmp_path,
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    everything = _requirements(project["dependencies"])
    device = _requirements((ROOT / "requirements-device.txt").read_text().splitlines())
    assert set(MODULES) == set(everything), "name the import module of every dependency"
    assert {name: everything[name] for name in device} == device
    blocked = sorted({MODULES[name] for name in everything} - {MODULES[n] for n in device})
    assert {"torch", "flwr", "opacus"} <= set(blocked)
    private, public = generate_signing_key()
    release = tmp_path / "release-000001.stamen"
    release.write_bytes(small_mf_release(1, private))
    args = [str(tmp_path / "device"), str(release), generate_key().hex(), public.hex()]
    script = BLOCKER + SERVE
    child = subprocess.run(
        [sys.executable, "-c", script, ",".join([*blocked, "ray"]), *args],
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert ast.literal_eval(child.stdout.strip().splitlines()[-1]) == []
    # a release of a model that needs torch is refused by name, not with a bare import error
    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER + NEEDS_TORCH,
            ",".join([*blocked, "ray"]),
            release.read_bytes().hex(),
            public.hex(),
            str(tmp_path / "other-device"),
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 0, refused.stderr[-3000:]
    said = refused.stdout.strip().splitlines()
    assert said[0].startswith("model 'two-tower' needs torch, which is not installed here")
    assert (
        "model 'two-tower' is not one this device serves (model 'two-tower' needs torch"
        in (said[1])
    )


NEEDS_TORCH = """
import dataclasses, sys
from stamen.client import Device, ReleaseError
from stamen.errors import ConfigError
from stamen.models.bundle import ReleaseBundle
from stamen.models.registry import model_class
from stamen.privacy import generate_key, generate_signing_key, open_signed, seal_signed
try:
    model_class("two-tower")
except ConfigError as error:
    print(error)
# a release of a model that needs torch, as a device-only install meets it
private, public = generate_signing_key()
signed_mf, mf_key = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
mf = ReleaseBundle.decode(open_signed(signed_mf, public_key=mf_key))
signed = seal_signed(dataclasses.replace(mf, model="two-tower").encode(), private_key=private)
with Device.open(sys.argv[3], key=generate_key(), release_key=public) as device:
    try:
        device.apply_release(signed)
    except ReleaseError as error:
        print(error)
"""
