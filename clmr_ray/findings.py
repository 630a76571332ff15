"""The paper's findings as verdicts: each claim compares two rows; effect, 95 % interval, verdict.

A claim (ablations/findings.yaml, data) says one row beats another ("all transformations >
random crop only"). For each claim and metric, from the run records alone:

- effect: mean over the better row's runs minus mean over the worse row's runs;
- 95 % interval from two independent sources of error:
    seeds: training randomness; paired over seeds when both rows ran the same seeds
           (variance of the per-seed differences / n), else Welch; needs >= 2 seeds a row;
    tracks: which tracks the test set happens to hold; a bootstrap over the tracks of the split
           (the same resampled tracks for every run on that split, so rows scored on one test set
           are compared on the same tracks), from the per-track predictions each record keeps;
  the two variances add, with Satterthwaite's degrees of freedom for the t quantile (just the
  normal quantile with one seed, where only the tracks are resampled);
- verdict: "reproduced" if the whole interval is on the paper's side of zero, "contradicted"
  if it is wholly on the other side, else "inconclusive" — never from the mean alone.
Table rows get the same interval around their mean (tables.py).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .config import SpecError, load_yaml
from .results import decode_array, machine_summary

DEFAULT_FINDINGS = Path(__file__).resolve().parent.parent / "ablations" / "findings.yaml"
METRIC = re.compile(r"^(valid|test)_(acc|map|roc_auc)$")
DEFAULT_METRICS = ("test_acc", "valid_map", "test_map")
LEVEL = 0.95
N_RESAMPLES = 1000


class FindingsError(SpecError):
    """A findings file is invalid; one line naming the file and the key."""


@dataclass(frozen=True)
class RowRef:
    table: str
    row: str

    def __str__(self) -> str:
        return f"{self.table}/{self.row}"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    better: RowRef
    worse: RowRef
    metrics: tuple[str, ...] = DEFAULT_METRICS


# ------------------------------------------------------------------ the claims file

_CLAIM_KEYS = ("id", "claim", "better", "worse", "metrics")


def load_claims(path: str | Path = DEFAULT_FINDINGS) -> list[Claim]:
    path = Path(path)
    if not path.is_file():
        raise FindingsError(f"{path}: findings file not found")
    return claims_from_dict(load_yaml(path), str(path))


def claims_from_dict(data, where: str = "findings") -> list[Claim]:
    def fail(message: str):
        raise FindingsError(f"{where}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("claims"), list) or not data["claims"]:
        fail("expected a mapping with a non-empty list 'claims'")
    extra = [k for k in data if k != "claims"]
    if extra:
        fail(f"unknown key '{extra[0]}'{_did_you_mean(extra[0], ['claims'])}")
    claims, seen = [], set()
    for i, item in enumerate(data["claims"]):
        at = f"claims[{i}]"
        if not isinstance(item, dict):
            fail(f"{at}: expected a mapping with {', '.join(_CLAIM_KEYS)}")
        for key in item:
            if key not in _CLAIM_KEYS:
                fail(f"{at}: unknown key '{key}'{_did_you_mean(key, _CLAIM_KEYS)}")
        for key in ("id", "claim", "better", "worse"):
            if key not in item:
                fail(f"{at}: missing '{key}'")
        if item["id"] in seen:
            fail(f"{at}.id: '{item['id']}' is used twice")
        seen.add(item["id"])
        refs = {}
        for side in ("better", "worse"):
            ref = item[side]
            if not isinstance(ref, str) or ref.count("/") != 1 or not all(ref.split("/")):
                fail(f"{at}.{side}: expected 'TABLE/ROW' (e.g. table1/audio_all), got {ref!r}")
            refs[side] = RowRef(*ref.split("/"))
        metrics = item.get("metrics", list(DEFAULT_METRICS))
        if not isinstance(metrics, list) or not metrics:
            fail(f"{at}.metrics: expected a non-empty list, e.g. [test_acc, valid_map]")
        for metric in metrics:
            if not isinstance(metric, str) or not METRIC.match(metric):
                fail(f"{at}.metrics: unknown metric {metric!r}; use valid_/test_ + acc, map or roc_auc")
        claims.append(Claim(str(item["id"]), str(item["claim"]), refs["better"], refs["worse"], tuple(metrics)))
    return claims


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ------------------------------------------------------------- per-run bootstrap


class TrackBootstrap:
    """The metric of every run on the same resampled tracks: one index matrix per set of tracks
    (fixed by the labels, so runs on one split share it), and each run's B values computed once."""

    def __init__(self, n_resamples: int = N_RESAMPLES, seed: int = 0):
        self.n_resamples, self.seed = n_resamples, seed
        self._indices: dict[str, np.ndarray] = {}
        self._values: dict[tuple, np.ndarray | None] = {}

    def values(self, record: pd.Series, metric: str) -> np.ndarray | None:
        """[B] values of `metric` for one record, or None without per-track predictions."""
        key = (record["run_id"], metric)
        if key not in self._values:
            self._values[key] = self._compute(record, metric)
        return self._values[key]

    def _compute(self, record: pd.Series, metric: str) -> np.ndarray | None:
        split, kind = METRIC.match(metric).groups()
        scores, labels = record.get(f"{split}_track_scores"), record.get(f"{split}_track_labels")
        if not isinstance(scores, bytes) or not isinstance(labels, bytes):
            return None
        scores, labels = decode_array(scores).astype(np.float64), decode_array(labels)
        if kind == "acc" and labels.ndim != 1:
            return None
        idx = self._resamples(labels)
        if kind == "acc":  # exact, and vectorised: accuracy is the mean of per-track hits
            hits = (scores.argmax(axis=1) == labels).astype(np.float64)
            return hits[idx].mean(axis=1)
        if kind == "map":
            return M.resampled_mean_average_precision(scores, labels, idx)
        return np.array([M.macro_roc_auc(scores[i], labels[i]) for i in idx])

    def _resamples(self, labels: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(np.ascontiguousarray(labels).tobytes() + str(labels.shape).encode()).hexdigest()
        if key not in self._indices:
            rng = np.random.default_rng([self.seed, int(key[:8], 16)])
            n = labels.shape[0]
            self._indices[key] = rng.integers(0, n, size=(self.n_resamples, n))
        return self._indices[key]


# ------------------------------------------------------------------- intervals


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    n: int  # seeds behind the estimate (per row)
    paired: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        parts = []
        if self.n >= 2:
            parts.append(f"{'paired' if self.paired else 'Welch'} over {self.n} seeds")
        if "no track bootstrap" not in " ".join(self.notes):
            parts.append("track bootstrap")
        return " + ".join(parts) or "none"


def _t_interval(estimate: float, seed_var: float, seed_df: float, track_var: float, level: float = LEVEL):
    from scipy import stats

    total = seed_var + track_var
    if not np.isfinite(total):
        return np.nan, np.nan
    if seed_var > 0 and np.isfinite(seed_df):
        df = total**2 / (seed_var**2 / seed_df)  # Satterthwaite: the track part has (nearly) infinite df
        q = stats.t.ppf(0.5 + level / 2, df)
    else:
        q = stats.norm.ppf(0.5 + level / 2)
    half = q * np.sqrt(total)
    return estimate - half, estimate + half


def _track_variance(boot: TrackBootstrap, runs: pd.DataFrame, metric: str) -> np.ndarray | None:
    """[B] bootstrap values of the mean over runs, or None if a run lacks predictions."""
    values = [boot.values(r, metric) for _, r in runs.iterrows()]
    if not values or any(v is None for v in values):
        return None
    return np.nanmean(np.stack(values), axis=0)


def row_interval(runs: pd.DataFrame, metric: str, boot: TrackBootstrap | None = None) -> Interval:
    """The mean of one row's runs with its 95 % interval (seeds + tracks)."""
    boot = boot or TrackBootstrap()
    values = runs[metric].astype(float).dropna() if metric in runs else pd.Series(dtype=float)
    n = len(values)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0, notes=["no runs"])
    mean = float(values.mean())
    notes = []
    seed_var, seed_df = (float(values.var(ddof=1)) / n, n - 1) if n >= 2 else (0.0, np.inf)
    if n == 1:
        notes.append("1 seed: training randomness not covered")
    track = _track_variance(boot, runs.loc[values.index], metric)
    track_var = float(np.nanvar(track, ddof=1)) if track is not None else 0.0
    if track is None:
        notes.append("no track bootstrap (records without per-track predictions)")
        if n < 2:
            return Interval(mean, np.nan, np.nan, n, notes=notes)
    low, high = _t_interval(mean, seed_var, seed_df, track_var)
    return Interval(mean, low, high, n, notes=notes)


def difference_interval(better: pd.DataFrame, worse: pd.DataFrame, metric: str,
                        boot: TrackBootstrap | None = None) -> Interval:
    """Mean(better) - mean(worse) with its 95 % interval; paired over seeds when both rows ran
    the same seeds, the same resampled tracks when both were scored on the same tracks."""
    boot = boot or TrackBootstrap()
    a = better.dropna(subset=[metric]) if metric in better else better.iloc[:0]
    b = worse.dropna(subset=[metric]) if metric in worse else worse.iloc[:0]
    if a.empty or b.empty:
        return Interval(np.nan, np.nan, np.nan, min(len(a), len(b)), notes=["a row has no runs"])
    a = a.drop_duplicates("seed").set_index("seed", drop=False).sort_index()
    b = b.drop_duplicates("seed").set_index("seed", drop=False).sort_index()
    va, vb = a[metric].astype(float), b[metric].astype(float)
    paired = list(a.index) == list(b.index) and len(a) >= 2
    notes = []
    if paired:
        d = va - vb
        n = len(d)
        seed_var, seed_df = float(d.var(ddof=1)) / n, n - 1
    elif len(a) >= 2 and len(b) >= 2:
        n = min(len(a), len(b))
        sa, sb = float(va.var(ddof=1)) / len(a), float(vb.var(ddof=1)) / len(b)
        seed_var = sa + sb
        denom = (sa**2 / (len(a) - 1) if sa else 0.0) + (sb**2 / (len(b) - 1) if sb else 0.0)
        seed_df = seed_var**2 / denom if denom > 0 else np.inf
    else:
        n = min(len(a), len(b))
        seed_var, seed_df = 0.0, np.inf
        notes.append(f"{n} seed: training randomness not covered, tracks only")
    estimate = float(va.mean() - vb.mean())
    ta, tb = _track_variance(boot, a, metric), _track_variance(boot, b, metric)
    if ta is None or tb is None:
        notes.append("no track bootstrap (records without per-track predictions)")
        track_var = 0.0
        if seed_var == 0.0 and n < 2:
            return Interval(estimate, np.nan, np.nan, n, paired, notes)
    else:
        track_var = float(np.nanvar(ta - tb, ddof=1))
    low, high = _t_interval(estimate, seed_var, seed_df, track_var)
    return Interval(estimate, low, high, n, paired, notes)


def verdict(interval: Interval) -> str:
    """The paper's direction is better > worse: an interval above 0 reproduces it."""
    if not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        return "inconclusive"
    if interval.low > 0:
        return "reproduced"
    if interval.high < 0:
        return "contradicted"
    return "inconclusive"


# ------------------------------------------------------------------- findings


def evaluate_claims(records: pd.DataFrame, claims: list[Claim], paper: pd.DataFrame | None = None,
                    boot: TrackBootstrap | None = None) -> pd.DataFrame:
    """One row per (claim, metric) whose two rows both have records: effect, interval, verdict,
    the paper's own effect where it reports the metric."""
    from .tables import PAPER_METRICS, paper_reference

    boot = boot or TrackBootstrap()
    paper = paper_reference() if paper is None else paper
    out = []
    for claim in claims:
        sides = {side: _rows(records, getattr(claim, side)) for side in ("better", "worse")}
        if any(s.empty for s in sides.values()):
            continue
        for metric in claim.metrics:
            interval = difference_interval(sides["better"], sides["worse"], metric, boot)
            if not np.isfinite(interval.estimate):
                continue
            out.append({
                "claim_id": claim.id, "claim": claim.text, "metric": metric,
                "better": str(claim.better), "worse": str(claim.worse),
                "n_better": len(sides["better"]), "n_worse": len(sides["worse"]),
                "mean_better": float(sides["better"][metric].astype(float).mean()),
                "mean_worse": float(sides["worse"][metric].astype(float).mean()),
                "effect": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
                "paper_effect": _paper_effect(paper, claim, PAPER_METRICS.get(metric)),
                "verdict": verdict(interval), "method": interval.method, "note": "; ".join(interval.notes),
            })
    return pd.DataFrame(out, columns=FINDINGS_COLUMNS)


FINDINGS_COLUMNS = ["claim_id", "claim", "metric", "better", "worse", "n_better", "n_worse", "mean_better",
                    "mean_worse", "effect", "ci_low", "ci_high", "paper_effect", "verdict", "method", "note"]


def _rows(records: pd.DataFrame, ref: RowRef) -> pd.DataFrame:
    if records.empty or "table" not in records or "row" not in records:
        return pd.DataFrame()
    return records[(records["table"] == ref.table) & (records["row"] == ref.row)]


def _paper_effect(paper: pd.DataFrame, claim: Claim, column: str | None) -> float:
    if column is None:
        return np.nan
    values = []
    for ref in (claim.better, claim.worse):
        hit = paper[(paper["table"] == ref.table) & (paper["row"] == ref.row)]
        if hit.empty:
            return np.nan
        values.append(float(hit[column].iloc[0]))
    return values[0] - values[1]


def to_markdown(findings: pd.DataFrame, records: pd.DataFrame | None = None) -> str:
    """One line per claim, one column per metric: verdict, our effect [95% interval], the paper's effect."""
    metrics = list(dict.fromkeys(findings["metric"])) if not findings.empty else []
    lines = ["| claim | runs | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for claim_id, group in findings.groupby("claim_id", sort=False):
        first = group.iloc[0]
        cells = []
        for metric in metrics:
            hit = group[group["metric"] == metric]
            cells.append(_finding_cell(hit.iloc[0]) if len(hit) else "—")
        lines.append(f"| {first['claim']} | {first['n_better']} vs {first['n_worse']} | " + " | ".join(cells) + " |")
    notes = sorted({n for n in findings["note"] if n}) if not findings.empty else []
    methods = sorted(set(findings["method"])) if not findings.empty else []
    tail = [("Cells: verdict, our effect (better row minus worse row) [95% interval]; the paper's effect where it "
             "reports the metric (its mAP is on the validation split).")]
    if methods:
        tail.append(f"Intervals: {', '.join(methods)} ({N_RESAMPLES} track resamples).")
    tail += [f"Note: {n}." for n in notes]
    if records is not None and not records.empty:
        tail.append("Records from: " + "; ".join(machine_summary(records)) + ".")
    return "\n".join(lines + [""] + tail)


def _finding_cell(f: pd.Series) -> str:
    ci = "" if pd.isna(f["ci_low"]) else f" [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"
    paper = "" if pd.isna(f["paper_effect"]) else f"; paper {f['paper_effect']:+.3f}"
    return f"**{f['verdict']}** {f['effect']:+.3f}{ci}{paper}"


def plot_findings(findings: pd.DataFrame, path: Path, title: str = "Findings") -> Path:
    """Forest plot: each claim's effect with its interval, the paper's effect beside it; the
    paper's direction (better > worse) is the shaded right half."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}
    n = max(len(findings), 1)
    fig, ax = plt.subplots(figsize=(11, 0.38 * n + 2.2))
    y = np.arange(len(findings))
    span = np.nanmax(np.abs(findings[["ci_low", "ci_high", "effect", "paper_effect"]].to_numpy(float))) \
        if len(findings) else 1.0
    span = float(span) * 1.1 if np.isfinite(span) and span > 0 else 1.0
    ax.axvspan(0, span, color="tab:green", alpha=0.06, label="paper's direction (better > worse)")
    ax.axvline(0, color="black", lw=0.8)
    for i, (_, f) in enumerate(findings.iterrows()):
        colour = colours[f["verdict"]]
        if np.isfinite(f["ci_low"]):
            ax.plot([f["ci_low"], f["ci_high"]], [i, i], color=colour, lw=2)
        ax.plot(f["effect"], i, "o", color=colour)
        if np.isfinite(f["paper_effect"]):
            ax.plot(f["paper_effect"], i, "D", color="black", ms=4, mfc="none")
    ax.plot([], [], "D", color="black", ms=4, mfc="none", label="paper's effect")
    for name, colour in colours.items():
        ax.plot([], [], "o-", color=colour, label=f"ours: {name}")
    ax.set_yticks(y, [f"{f['claim'][:64]} ({f['metric']})" for _, f in findings.iterrows()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(-span, span)
    ax.set_xlabel("effect: better row minus worse row (95% interval)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / n - 0.04), ncol=3, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_findings(records: pd.DataFrame, out_dir, claims: list[Claim] | None = None,
                   title: str = "Findings") -> tuple[pd.DataFrame, dict[str, Path]]:
    """findings.{parquet,csv,md,png} in out_dir (nothing when no claim has records on both rows)."""
    claims = load_claims() if claims is None else claims
    findings = evaluate_claims(records, claims)
    if findings.empty:
        return findings, {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {suffix: out_dir / f"findings.{suffix}" for suffix in ("parquet", "csv", "md", "png")}
    findings.to_parquet(paths["parquet"], index=False)
    findings.to_csv(paths["csv"], index=False)
    refs = set(findings["better"]) | set(findings["worse"])
    used = records[(records["table"].astype(str) + "/" + records["row"].astype(str)).isin(refs)]
    paths["md"].write_text(f"## {title}\n\n{to_markdown(findings, used)}\n")
    plot_findings(findings, paths["png"], title)
    return findings, paths
