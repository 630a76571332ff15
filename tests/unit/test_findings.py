"""Findings from hand-built records: verdicts, intervals that cover at the nominal rate, bad files."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clmr_ray import findings as F
from clmr_ray.config import SpecError
from clmr_ray.results import encode_array
from clmr_ray.tables import build_table

CLAIM = F.Claim("b_vs_a", "B > A", F.RowRef("t", "b"), F.RowRef("t", "a"), ("test_acc",))


def runs_with_accuracy(row: str, hits_per_seed: list[np.ndarray]) -> list[dict]:
    """Records of one row: seed i's run gets track t right iff hits_per_seed[i][t] (2 classes, label 0)."""
    out = []
    for seed, hits in enumerate(hits_per_seed):
        scores = np.where(hits[:, None], [[0.9, 0.1]], [[0.1, 0.9]]).astype(np.float32)
        labels = np.zeros(len(hits), dtype=np.int16)
        out.append({"run_id": f"{row}-s{seed}", "table": "t", "row": row, "seed": seed,
                    "test_acc": float(hits.mean()), "test_track_scores": encode_array(scores),
                    "test_track_labels": encode_array(labels)})
    return out


def records_for(acc_a: float, acc_b: float, *, seeds: int = 3, tracks: int = 300, rng=None) -> pd.DataFrame:
    rng = rng or np.random.default_rng(0)
    difficulty = rng.random(tracks)  # shared by both rows: the same test tracks
    rows = []
    for row, acc in (("a", acc_a), ("b", acc_b)):
        rows += runs_with_accuracy(row, [difficulty < acc + 0.01 * rng.standard_normal() for _ in range(seeds)])
    return pd.DataFrame(rows)


def test_clear_reproduction_contradiction_and_tie():
    verdicts = {}
    for name, (a, b) in {"reproduced": (0.3, 0.6), "contradicted": (0.6, 0.3), "tie": (0.5, 0.5)}.items():
        found = F.evaluate_claims(records_for(a, b), [CLAIM])
        assert len(found) == 1
        verdicts[name] = found.iloc[0]
    assert verdicts["reproduced"]["verdict"] == "reproduced"
    assert verdicts["reproduced"]["effect"] == pytest.approx(0.3, abs=0.03)
    assert verdicts["reproduced"]["ci_low"] > 0.2
    assert verdicts["contradicted"]["verdict"] == "contradicted"
    assert verdicts["contradicted"]["ci_high"] < 0
    assert verdicts["tie"]["verdict"] == "inconclusive"
    assert verdicts["tie"]["ci_low"] < 0 < verdicts["tie"]["ci_high"]
    assert verdicts["tie"]["method"] == "paired over 3 seeds + track bootstrap"


def test_one_seed_uses_the_track_bootstrap_and_says_so():
    found = F.evaluate_claims(records_for(0.3, 0.6, seeds=1), [CLAIM]).iloc[0]
    assert found["verdict"] == "reproduced"
    assert "1 seed" in found["note"] and found["method"] == "track bootstrap"


def test_records_without_predictions_fall_back_to_seeds():
    records = records_for(0.3, 0.6).drop(columns=["test_track_scores", "test_track_labels"])
    found = F.evaluate_claims(records, [CLAIM]).iloc[0]
    assert found["verdict"] == "reproduced" and "no track bootstrap" in found["note"]
    one_seed = records_for(0.3, 0.6, seeds=1).drop(columns=["test_track_scores", "test_track_labels"])
    assert F.evaluate_claims(one_seed, [CLAIM]).iloc[0]["verdict"] == "inconclusive"


def interval_coverage(seeds: int = 4, studies: int = 100, tracks: int = 250, rng_seed: int = 42) -> float:
    """Share of simulated studies whose 95 % interval covers the true difference of two rows' accuracy.
    Tracks have a latent difficulty d ~ N(0, 1); a run gets a track right iff d + e < tau + delta
    (e: per-run noise, delta: per-seed training luck), so the expected accuracy of a row is
    Phi(tau / sqrt(1 + s_e^2 + s_d^2)). Fresh tracks and seeds in each study. The README's figures:
    python -c 'import sys; sys.path.insert(0, "tests/unit"); import test_findings as t; print(t.interval_coverage(3, 1000))'"""
    rng = np.random.default_rng(rng_seed)
    s_e, s_d = 0.5, 0.15
    tau = {"a": 0.0, "b": 0.25}
    scale = np.sqrt(1 + s_e**2 + s_d**2)
    truth = stats.norm.cdf(tau["b"] / scale) - stats.norm.cdf(tau["a"] / scale)
    covered = 0
    for draw in range(studies):
        d = rng.standard_normal(tracks)
        rows = []
        for row in ("a", "b"):
            hits = [d + s_e * rng.standard_normal(tracks) < tau[row] + s_d * rng.standard_normal()
                    for _ in range(seeds)]
            rows += runs_with_accuracy(row, hits)
        found = F.evaluate_claims(pd.DataFrame(rows), [CLAIM], boot=F.TrackBootstrap(400, seed=draw)).iloc[0]
        covered += found["ci_low"] <= truth <= found["ci_high"]
    return covered / studies


def test_interval_covers_the_true_difference_at_about_the_nominal_rate():
    covered = interval_coverage(seeds=4, studies=100)
    assert covered >= 0.90, f"the 95% interval covered the true difference in {covered:.0%} of 100 studies"


def test_table_rows_get_an_interval_and_n():
    records = records_for(0.3, 0.6)
    table = build_table(records, "t", ["test_acc"]).set_index("row")
    for row, acc in (("a", 0.3), ("b", 0.6)):
        assert table.loc[row, "n"] == 3
        assert table.loc[row, "test_acc_ci_low"] < table.loc[row, "test_acc_mean"] < table.loc[row, "test_acc_ci_high"]
        assert table.loc[row, "test_acc_ci_low"] < acc + 0.03 and table.loc[row, "test_acc_ci_high"] > acc - 0.03


def test_written_files_and_markdown(tmp_path):
    _, paths = F.write_findings(records_for(0.3, 0.6), tmp_path, [CLAIM])
    assert set(paths) == {"parquet", "csv", "md", "png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert "**reproduced**" in paths["md"].read_text()
    assert pd.read_parquet(paths["parquet"])["verdict"].tolist() == ["reproduced"]


@pytest.mark.parametrize("findings, ablations", [
    ("findings.yaml", ["table1.yaml", "table2.yaml"]),
    ("studies/findings.yaml", [f"studies/{name}.yaml" for name in (
        "audio_augmentations", "fusion", "fingerprint", "fingerprint_strength", "fingerprint_escape", "crop_length")]),
])
def test_shipped_claims_name_rows_of_the_shipped_ablations(findings, ablations):
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.cli import ABLATIONS_DIR

    rows = {(a.name, r.id) for a in (load_ablation(ABLATIONS_DIR / f) for f in ablations) for r in a.rows}
    claims = F.load_claims(ABLATIONS_DIR / findings)
    assert len(claims) >= 8
    for claim in claims:
        for ref in (claim.better, claim.worse):
            assert (ref.table, ref.row) in rows, f"{claim.id}: {ref} is no row of {ablations}"


@pytest.mark.parametrize("text, message", [
    ("claims: []", "non-empty list 'claims'"),
    ("claim: []", "non-empty list 'claims'"),
    ("claims: [{id: x, claim: c, better: table1/a, worse: table1/b}]\nextra: 1", "unknown key 'extra'"),
    ("claims: [{id: x, claim: c, better: table1/a}]", "claims[0]: missing 'worse'"),
    ("claims: [{id: x, claim: c, better: table1, worse: table1/b}]", "claims[0].better: expected 'TABLE/ROW'"),
    ("claims: [{id: x, claim: c, beter: table1/a, worse: table1/b}]", "unknown key 'beter' (did you mean 'better'?)"),
    ("claims: [{id: x, claim: c, better: t/a, worse: t/b, metrics: [test_accuracy]}]", "unknown metric 'test_accuracy'"),
    ("claims: [{id: x, claim: c, better: t/a, worse: t/b}, {id: x, claim: d, better: t/a, worse: t/b}]",
     "'x' is used twice"),
    ("claims: [oops", "not valid YAML"),
])
def test_bad_findings_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "findings.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:  # FindingsError, or config.load_yaml's SpecError for bad YAML
        F.load_claims(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_findings_file(tmp_path):
    with pytest.raises(F.FindingsError, match="findings file not found"):
        F.load_claims(tmp_path / "nope.yaml")
