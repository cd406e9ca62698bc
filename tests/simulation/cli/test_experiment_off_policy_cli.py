"""``stamen experiment candidates`` and ``report --off-policy``: publish a release's candidate
policies, refuse bad ones by name, and read a run's off-policy evaluation back."""

from __future__ import annotations

import json

import numpy as np
from helpers.cli import invoke, ok, refused
from helpers.signed_releases import film_release, newest_release

from stamen.server.off_policy_stats import off_policy_report

CANDIDATES = [
    {"name": "explore-more", "overrides": {"explore": 0.3}, "max_weight": 3.0},
    {"name": "greedy", "overrides": {"explore": 0.0}, "max_weight": 1.2},
]


def test_candidates_are_published_into_the_next_release_and_bad_ones_named(tmp_path) -> None:
    film_release(tmp_path, 3)
    releases, key = tmp_path / "releases", tmp_path / "keys" / "release.key"
    args = ["--releases", str(releases), "--signing-key", str(key)]
    definition = tmp_path / "candidates.json"
    definition.write_text(json.dumps({"candidates": CANDIDATES}))
    out = ok(["experiment", "candidates", str(definition), *args])
    assert "release 4" in out and "explore-more, greedy" in out
    public = (releases / "release.pub").read_bytes()
    assert newest_release(releases, public).extras["candidate_policies"] == CANDIDATES
    refused(invoke(["experiment", "candidates", str(definition), *args]), "nothing published")
    toml = tmp_path / "candidates.toml"
    toml.write_text('[[candidates]]\nname = "wide"\nmax_weight = 5.0\n')
    assert "release 5" in ok(["experiment", "candidates", str(toml), *args])
    assert newest_release(releases, public).extras["candidate_policies"] == [
        {"name": "wide", "overrides": {}, "max_weight": 5.0}
    ]
    # bad input, named
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"candidates": []}))
    refused(invoke(["experiment", "candidates", str(empty), *args]), "no candidate policies")
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps(CANDIDATES))
    refused(invoke(["experiment", "candidates", str(shape), *args]), "one key, 'candidates'")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"candidates": [{"name": "x", "overrides": {"explore": 2}, "max_weight": 0}]})
    )
    refused(
        invoke(["experiment", "candidates", str(bad), *args]),
        "bad.json",
        "0: overrides",
        "explore",
        "max_weight",
    )
    refused(invoke(["experiment", "candidates", *args]), "a candidates file, or --none")
    # --none: the next release carries none; again, nothing to end
    assert "carrying candidate policies: none" in ok(["experiment", "candidates", "--none", *args])
    assert "candidate_policies" not in newest_release(releases, public).extras
    refused(invoke(["experiment", "candidates", "--none", *args]), "nothing to end")


def _rounds_log(folder, records: list[dict]) -> None:  # noqa: ANN001
    folder.mkdir()
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_prints_the_latest_off_policy_evaluation_or_says_there_is_none(tmp_path) -> None:
    # a run's evaluation: the server's report from (here: made-up) released sums
    rng = np.random.default_rng(0)
    z = rng.uniform(0.1, 0.9, (50, 6))
    rows, cols = np.triu_indices(6)
    sums = np.concatenate([z.sum(0), (z.T @ z)[rows, cols]])
    report = off_policy_report(
        sums,
        evaluation="off-policy",
        candidates=["explore-more", "greedy"],
        max_weights=[3.0, 1.2],
        noise_std=0.5,
        privacy={"epsilon": 2.0, "delta": 0.02},
    ).to_json()
    checkpoints = tmp_path / "checkpoints"
    _rounds_log(
        checkpoints,
        [
            {"round": 1, "analytics": {"off-policy": {"failed": "SecAgg+ halted"}}},
            {"round": 2, "analytics": {"off-policy": {"devices": 50, "report": report}}},
        ],
    )
    out = ok(["experiment", "report", str(checkpoints), "--off-policy"])
    assert "off-policy evaluation, round 2: 50 devices answered; ε = 2, δ = 0.02" in out
    assert f"{report['logging']['value']:.4f} engagements per slot" in out
    snips = next(c for c in report["candidates"] if c["estimator"] == "snips")
    assert f"{snips['effect']:+.4f}" in out and "explore-more" in out and "greedy" in out
    refused(  # no A/B experiment in this run: the plain report points at --off-policy
        invoke(["experiment", "report", str(checkpoints)]),
        "no experiment measured in this run (it evaluated candidate policies: --off-policy)",
    )
    body = json.loads(ok(["experiment", "report", str(checkpoints), "--off-policy", "--json"]))
    assert body["round"] == 2 and body["report"]["candidates"] == report["candidates"]
    # a run whose release carried no candidate policies: said so
    other = tmp_path / "other"
    _rounds_log(other, [{"round": 1, "analytics": {"trending": {"devices": 9}}}])
    refused(
        invoke(["experiment", "report", str(other), "--off-policy"]),
        "no off-policy evaluation in this run",
        "stamen experiment candidates",
    )
    # the latest evaluation failed: exit 1, saying why
    failed = tmp_path / "failed"
    _rounds_log(failed, [{"round": 1, "analytics": {"off-policy": {"failed": "SecAgg+ halted"}}}])
    result = invoke(["experiment", "report", str(failed), "--off-policy"])
    assert result.exit_code == 1 and "not measured (SecAgg+ halted)" in result.output
