"""``stamen experiment``: check a definition, publish it into the next release, plan it on
simulated people, and read a run's measurements back."""

from __future__ import annotations

import json

from helpers.cli import invoke, ok, refused
from helpers.signed_releases import film_release, newest_release

from stamen.client.device.experiments import Experiment
from stamen.models.bundle import ReleaseBundle
from stamen.privacy import open_signed

EXPERIMENT = {
    "id": "explore-1",
    "salt": "s",
    "arms": [{"name": "control"}, {"name": "explore", "overrides": {"explore": 0.1}}],
}


def test_check_prints_the_arms_and_names_every_problem(tmp_path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(EXPERIMENT))
    out = ok(["experiment", "check", str(good)])
    assert "explore-1" in out and '{"explore": 0.1}' in out and "50.0%" in out
    toml = tmp_path / "good.toml"
    toml.write_text('id = "t"\nsalt = "s"\n[[arms]]\nname = "a"\n[[arms]]\nname = "b"\n')
    assert "experiment t" in ok(["experiment", "check", str(toml)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**EXPERIMENT, "salt": "", "colour": 1}))
    refused(invoke(["experiment", "check", str(bad)]), "bad.json", "salt", "colour")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    refused(invoke(["experiment", "check", str(broken)]), "not valid JSON")
    refused(invoke(["experiment", "check", str(tmp_path / "missing.json")]), "cannot read")


def test_publish_writes_the_next_release_with_the_experiment(tmp_path) -> None:
    film_release(tmp_path, 3)
    releases, key = tmp_path / "releases", tmp_path / "keys" / "release.key"
    definition = tmp_path / "experiment.json"
    definition.write_text(json.dumps(EXPERIMENT))
    args = ["--releases", str(releases), "--signing-key", str(key)]
    assert "release 4" in ok(["experiment", "publish", str(definition), *args])
    public = (releases / "release.pub").read_bytes()

    four = newest_release(releases, public)
    old = ReleaseBundle.decode(
        open_signed((releases / "release-000003.stamen").read_bytes(), public_key=public)
    )
    published = Experiment.from_json(EXPERIMENT).to_json()  # with the defaults filled in
    assert four.release == 4 and four.extras["experiments"] == [published]
    for a, b in zip(four.shared_arrays(), old.shared_arrays(), strict=True):
        assert (a == b).all()
    # the same again: nothing to publish
    refused(invoke(["experiment", "publish", str(definition), *args]), "nothing published")
    # the same id again replaces it (and says so); another is added beside it
    changed = {**EXPERIMENT, "salt": "t"}
    definition.write_text(json.dumps(changed))
    other = tmp_path / "other.json"
    ranker = {"name": "no-ranker", "overrides": {"ranker": False}}
    other.write_text(json.dumps({**EXPERIMENT, "id": "other", "arms": [{"name": "c"}, ranker]}))
    result = invoke(["experiment", "publish", str(definition), str(other), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "replaces experiment explore-1 (a new salt" in result.output
    assert [e["salt"] for e in newest_release(releases, public).extras["experiments"]] == ["t", "s"]
    # two experiments may not override the same field: neither effect would be its own
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({**EXPERIMENT, "id": "clash"}))
    refused(invoke(["experiment", "publish", str(clash), *args]), "'explore' (explore-1 and clash)")
    refused(invoke(["experiment", "publish", str(definition), str(definition), *args]), "repeat")
    elsewhere = ["--releases", str(tmp_path / "none"), "--signing-key", str(key)]
    refused(invoke(["experiment", "publish", str(other), *elsewhere]), "no release to publish")
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(bytes(range(32)))
    wrong = ["--releases", str(releases), "--signing-key", str(stranger)]
    refused(invoke(["experiment", "publish", str(clash), *wrong]), "not the key of")
    # ending one: the next release carries the other only; an unknown id is named
    assert "release 6" in ok(["experiment", "end", "explore-1", *args])
    assert [e["id"] for e in newest_release(releases, public).extras["experiments"]] == ["other"]
    refused(invoke(["experiment", "end", "explore-1", *args]), "carries no experiment")


def test_simulate_finds_no_effect_between_equal_arms(tmp_path) -> None:
    same = tmp_path / "aa.json"
    same.write_text(json.dumps({**EXPERIMENT, "arms": [{"name": "a"}, {"name": "b"}]}))
    out = ok(
        ["experiment", "simulate", str(same), "--population", "2000", "--repetitions", "20"]
        + ["--json"]
    )
    result = json.loads(out)
    assert result["repetitions"] == 20 and result["privacy"]["epsilon"] <= 1.0 + 1e-6
    assert {row["metric"] for row in result["effects"]} == {
        "exposures",
        "engagement",
        "positive_rate",
        "not_interested",
    }
    assert all(row["true_effect"] == 0.0 for row in result["effects"])
    assert all(0.0 <= row["coverage"] <= 1.0 for row in result["effects"])


def _rounds_log(folder, records: list[dict]) -> None:  # noqa: ANN001
    folder.mkdir()
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _report(effect: float) -> dict:
    arm = {"exposed": 120.0, "means": {"engagement": 0.1}, "stderrs": {"engagement": 0.01}}
    return {
        "experiment": "explore-1",
        "control": "control",
        "alpha": 0.05,
        "noise_std": 2.5,
        "arms": [{"name": "control", **arm}, {"name": "explore", **arm}],
        "effects": [
            {
                "arm": "explore",
                "metric": "engagement",
                "effect": effect,
                "stderr": 0.01,
                "lower": effect - 0.02,
                "upper": effect + 0.02,
                "p_value": 0.5,
                "lift": 0.1,
                "lift_lower": 0.0,
                "lift_upper": 0.2,
            }
        ],
        "privacy": {"epsilon": 1.5, "delta": 0.001, "mode": "central"},
    }


def test_report_prints_the_latest_measurement_and_plots_every_round(tmp_path) -> None:
    checkpoints = tmp_path / "checkpoints"
    name = "experiment:explore-1"
    watched = {"arm": "explore", "metric": "engagement", "z": 3.0, "bound": 2.5}
    monitoring = {"look": 2, "looks": 4, "effects": [{**watched, "stopped": True}]}
    monitored = {**_report(0.03), "monitoring": monitoring}
    _rounds_log(
        checkpoints,
        [
            {"round": 1, "analytics": {name: {"devices": 9, "report": _report(0.01)}}},
            {"round": 2, "analytics": {"trending": {"devices": 9}}},
            {"round": 3, "analytics": {name: {"devices": 9, "report": monitored}}},
            {"round": 4, "analytics": {"experiment:gone": {"failed": "SecAgg+ halted"}}},
        ],
    )
    plot = tmp_path / "effects.png"
    result = invoke(["experiment", "report", str(checkpoints), "--plot", str(plot)])
    assert result.exit_code == 1, (result.output, result.exception)  # "gone" failed
    out = result.output
    assert "experiment explore-1, round 3" in out and "ε = 1.5" in out and "+0.0300" in out
    assert "look 2 of 4" in out and "stop: differs" in out and "+3.00" in out
    assert "experiment gone, round 4: not measured (SecAgg+ halted)" in out
    assert plot.stat().st_size > 0
    only = ["--experiment", "explore-1"]
    body = json.loads(ok(["experiment", "report", str(checkpoints), *only, "--json"]))
    assert body["explore-1"]["round"] == 3
    assert body["explore-1"]["report"]["effects"][0]["effect"] == 0.03
    nope = ["--experiment", "nope"]
    refused(invoke(["experiment", "report", str(checkpoints), *nope]), "(explore-1, gone)")
    missing = ["--plot", str(tmp_path / "no" / "such.png")]
    refused(invoke(["experiment", "report", str(checkpoints), *missing]), "no folder")
    failed_only = ["--experiment", "gone", "--plot", str(plot)]
    refused(invoke(["experiment", "report", str(checkpoints), *failed_only]), "nothing to plot")
    # a blank line is skipped and a half-written last line left out; anything else is named
    log = checkpoints / "rounds.jsonl"
    log.write_text(log.read_text() + "\n" + '{"round": 5, "analyt')
    assert "round 3" in ok(["experiment", "report", str(checkpoints), *only])
    log.write_text("[1, 2]\n" + log.read_text())
    refused(invoke(["experiment", "report", str(checkpoints)]), "line 1: not a round's record")
    refused(invoke(["experiment", "report", str(tmp_path / "elsewhere")]), "no rounds recorded")


def test_report_prints_the_cuped_effect_beside_the_unadjusted_one(tmp_path) -> None:
    checkpoints = tmp_path / "checkpoints"
    plain = _report(0.03)
    adjusted = {**plain["effects"][0], "effect": 0.025, "stderr": 0.005}
    adjusted.update(lower=0.0152, upper=0.0348, p_value=0.0001)
    cuped = {"theta": {"engagement": 0.4}, "arms": plain["arms"], "effects": [adjusted]}
    name = "experiment:explore-1"
    _rounds_log(
        checkpoints, [{"round": 1, "analytics": {name: {"report": {**plain, "cuped": cuped}}}}]
    )
    out = ok(["experiment", "report", str(checkpoints)])
    # unadjusted +0.0300 [+0.0100, +0.0500]; adjusted +0.0250 [+0.0152, +0.0348], a quarter
    # of the variance (stderr 0.005 against 0.01: -75%)
    assert "+0.0300" in out and "[+0.0100, +0.0500]" in out
    assert "+0.0250" in out and "[+0.0152, +0.0348]" in out and "-75%" in out
    assert "CUPED" in out and "engagement 0.400" in out


def test_check_and_report_show_an_experiments_guardrails(tmp_path) -> None:
    definition = tmp_path / "guarded.json"
    definition.write_text(json.dumps({**EXPERIMENT, "guardrails": ["latency", "diversity"]}))
    assert "guardrails: diversity, latency" in ok(["experiment", "check", str(definition)])
    plain = _report(0.03)
    guarded = dict(plain)
    arm = {
        "exposed": 120.0,
        "means": {"engagement": 0.1, "diversity": 0.62, "latency": 0.031},
        "stderrs": {"engagement": 0.01, "diversity": 0.02, "latency": 0.002},
    }
    guarded["arms"] = [{"name": "control", **arm}, {"name": "explore", **arm}]
    latency = {**plain["effects"][0], "metric": "latency", "effect": 0.0042}
    guarded["effects"] = [*plain["effects"], latency]
    checkpoints = tmp_path / "checkpoints"
    name = "experiment:explore-1"
    _rounds_log(checkpoints, [{"round": 1, "analytics": {name: {"report": guarded}}}])
    out = ok(["experiment", "report", str(checkpoints)])
    assert "0.6200 ± 0.0200" in out and "+0.0042" in out
    assert "diversity (higher is better), latency (lower is better)" in out
    plain_log = tmp_path / "plain"
    _rounds_log(plain_log, [{"round": 1, "analytics": {name: {"report": plain}}}])
    assert "Guardrails" not in ok(["experiment", "report", str(plain_log)])
