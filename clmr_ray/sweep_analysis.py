"""Which parameter of a sweep matters: importance, toggle effects, slices, best vs the paper's setting.

Reads only what a sweep leaves in its folder (a path or a filesystem URI): `sweep.yaml` (the resolved
sweep) and the Parquet records under `runs/`. From them it rebuilds an Optuna study (one trial per
record: COMPLETE with the metric, PRUNED when the scheduler stopped it, FAIL when it finished without
the metric), so finished, resumed and bucket sweeps are analysed alike, and the same study is kept as
an Optuna journal file (`optuna.journal`) that `optuna-dashboard` opens.

- importance: Optuna's fANOVA (random forest; only parameters present in every finished trial) and
  PED-ANOVA (what it takes to reach the top trials, see TOP_QUANTILE; conditional parameters included);
- toggles: every bool parameter's marginal effect, mean metric with it on minus off, with Welch's 95 %
  confidence interval (scipy);
- slices: metric against each numeric parameter (Optuna's matplotlib slice plot), one PNG each;
- best trial beside the reference setting: the sweep's first `points_to_evaluate` (the shipped sweeps
  list the paper's setting first), else the base spec.
No Ray here: `clmr-ray analyze` runs wherever the records are readable.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import yaml

from . import config, storage
from .results import flatten, read_records
from .sweep_files import Param, Sweep, SweepError, sweep_from_dict

JOURNAL = "optuna.journal"
METRIC_PREFIXES = ("valid_", "test_")
# PED-ANOVA's "top trials": Optuna's top 10 %, widened to at least 8 trials (at most half of them), since
# on a sweep of 12-30 trials 10 % is 1-3 points and the importance then follows their noise.
TOP_QUANTILE, TOP_MIN_TRIALS = 0.1, 8
CONFIDENCE = 0.95


@dataclass
class SweepFolder:
    location: object  # Path or URI of <storage>/<name>
    sweep: Sweep
    records: pd.DataFrame


@dataclass
class Analysis:
    sweep: Sweep
    location: object
    metric: str
    mode: str
    counts: dict[str, int]  # finished / stopped early / failed
    top_quantile: float  # PED-ANOVA's
    parameters: pd.DataFrame  # one row per parameter: importances, toggle effects, reference and best
    best: dict | None  # best record
    reference: dict  # {key: value} of the reference setting
    reference_source: str
    reference_run: dict | None  # the record that ran the reference setting, if any
    notes: list[str] = field(default_factory=list)
    out: object = None  # where the files went (default: the sweep folder)
    files: list = field(default_factory=list)


# ------------------------------------------------------------------------ reading


def read_sweep_folder(location) -> SweepFolder:
    """sweep.yaml + records of one sweep folder; one-line errors for anything else."""
    folder = storage.resolve(location)
    if not storage.exists(folder):
        raise SweepError(f"{location}: no such sweep folder (give STORAGE/NAME, e.g. results/sweeps/tiny_test)")
    saved = storage.join(folder, "sweep.yaml")
    if not storage.exists(saved):
        raise SweepError(f"{location}: no sweep.yaml, so not a sweep folder written by `clmr-ray sweep` "
                         "(give STORAGE/NAME, e.g. results/sweeps/tiny_test)")
    data = yaml.safe_load(storage.read_text(saved))
    if not isinstance(data, dict):
        raise SweepError(f"{saved}: expected the resolved sweep as a mapping")
    sweep = sweep_from_dict(data, str(saved))
    records = read_records(storage.join(folder, "runs"))
    if records.empty:
        raise SweepError(f"{storage.join(folder, 'runs')}: no trial records (*.parquet) yet; "
                         "a trial leaves one when it finishes")
    return SweepFolder(folder, sweep, _in_trial_order(records))


def _in_trial_order(records: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("created_at", "run_id") if c in records]
    return records.sort_values(keys, kind="stable").reset_index(drop=True) if keys else records


def metric_names(records: pd.DataFrame) -> list[str]:
    return sorted(c for c in records if c.startswith(METRIC_PREFIXES) and pd.api.types.is_numeric_dtype(records[c]))


def check_metric(records: pd.DataFrame, metric: str, where) -> None:
    names = metric_names(records)
    if metric not in names:
        raise SweepError(f"--metric {metric}: not a metric of the records in {where} "
                         f"(valid: {', '.join(names) or 'none'})")


def metric_mode(sweep: Sweep, metric: str) -> str:
    """The sweep's own mode for its metric; losses are minimised, every other metric maximised."""
    if metric == sweep.metric:
        return sweep.mode
    return "min" if "loss" in metric else "max"


# ------------------------------------------------------------------------ the Optuna study


def distribution(param: Param):
    import optuna.distributions as d

    if param.type == "bool":
        return d.CategoricalDistribution([True, False])
    if param.type == "categorical":
        return d.CategoricalDistribution(list(param.choices))
    if param.type == "float":
        return d.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return d.IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)


def record_params(sweep: Sweep, record: dict) -> dict:
    """The parameters Optuna sampled for this record's trial (inactive conditional ones are absent)."""
    raw = record.get("params")
    sampled = json.loads(raw) if isinstance(raw, str) and raw else {}
    params = {}
    for key, value in sampled.items():
        param = sweep.space.get(key)
        if param is None:
            continue
        if not param.contains(value):
            raise SweepError(f"record {record.get('run_id')}: {key}={value!r} is outside the sweep's distribution")
        params[key] = value
    return params


def trial_state(record: dict, metric: str):
    from optuna.trial import TrialState

    if record.get("status") == "stopped_early":
        return TrialState.PRUNED
    return TrialState.FAIL if _missing(record.get(metric)) else TrialState.COMPLETE


def frozen_trials(sweep: Sweep, records: pd.DataFrame, metric: str) -> list:
    """One Optuna trial per record, in the order the trials finished."""
    import optuna
    from optuna.trial import TrialState

    trials = []
    for record in records.to_dict("records"):
        state = trial_state(record, metric)
        params = record_params(sweep, record)
        attrs = {k: float(record[k]) for k in metric_names(records) if not _missing(record.get(k))}
        attrs["run_id"] = str(record.get("run_id"))
        trial = optuna.trial.create_trial(
            state=state, value=float(record[metric]) if state == TrialState.COMPLETE else None,
            params=params, distributions={k: distribution(sweep.space[k]) for k in params}, user_attrs=attrs)
        finished = _timestamp(record.get("created_at"))
        if finished is not None:
            seconds = record.get("time_total_s")
            trial.datetime_complete = finished
            trial.datetime_start = finished - dt.timedelta(seconds=0 if _missing(seconds) else float(seconds))
        trials.append(trial)
    return trials


def build_study(sweep: Sweep, records: pd.DataFrame, metric: str, mode: str, storage_=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage_, study_name=sweep.name,
                                direction="maximize" if mode == "max" else "minimize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
    study.set_user_attr("sweep", sweep.to_dict())
    study.add_trials(frozen_trials(sweep, records, metric))
    return study


def write_journal(sweep: Sweep, records: pd.DataFrame, folder) -> object:
    """The sweep's study (its own metric and mode) as <folder>/optuna.journal, replaced whole."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    def write(path):
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        build_study(sweep, records, sweep.metric, sweep.mode, JournalStorage(backend))

    records = _in_trial_order(records)
    return storage.write_file(folder, JOURNAL, write)


# ------------------------------------------------------------------------ analyses


def top_quantile(n_finished: int) -> float:
    return min(0.5, max(TOP_QUANTILE, TOP_MIN_TRIALS / max(n_finished, 1)))


def importances(study, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """fANOVA and PED-ANOVA importances (normalised to sum 1) per parameter; NaN where not assessed."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
    from optuna.trial import TrialState

    table = pd.DataFrame(index=pd.Index(keys, name="parameter"), columns=["fanova", "ped_anova"], dtype=float)
    notes: list[str] = []
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(finished) < 2:
        return table, [f"importance needs at least 2 finished trials, there are {len(finished)}"]
    evaluators = {"fanova": lambda: FanovaImportanceEvaluator(seed=0),
                  "ped_anova": lambda: PedAnovaImportanceEvaluator(target_quantile=top_quantile(len(finished)))}
    for name, make in evaluators.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = optuna.importance.get_param_importances(study, evaluator=make())
            except ImportError as exc:
                notes.append(f"{name}: skipped, {_first_line(exc)}")
                continue
            except (ValueError, RuntimeError) as exc:
                notes.append(f"{name}: not computed ({_first_line(exc)})")
                continue
        for key, value in found.items():
            table.loc[key, name] = value
        notes += sorted({f"{name}: {_first_line(w.message)}" for w in caught
                         if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)})
    conditional = [k for k in keys if pd.isna(table.loc[k, "fanova"]) and any(k in t.params for t in finished)]
    if conditional and not table["fanova"].isna().all():
        notes.append(f"fanova: not assessed for {', '.join(conditional)} (conditional: absent from some trials)")
    return table, notes


def toggle_effects(sweep: Sweep, finished: pd.DataFrame, metric: str) -> pd.DataFrame:
    """For every bool parameter: the metric's mean with it on and off (the run's effective value,
    sampled or from the base spec), the difference and Welch's 95 % confidence interval."""
    from scipy import stats

    rows = []
    for key, param in sweep.space.items():
        if param.type != "bool":
            continue
        state = finished[f"spec.{key}"] if f"spec.{key}" in finished else _sampled(finished, key)
        on = finished.loc[state.eq(True), metric].to_numpy(float)
        off = finished.loc[state.eq(False), metric].to_numpy(float)
        row = {"parameter": key, "n_on": len(on), "n_off": len(off),
               "mean_on": on.mean() if len(on) else np.nan, "mean_off": off.mean() if len(off) else np.nan,
               "effect": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        if len(on) and len(off):
            row["effect"] = row["mean_on"] - row["mean_off"]
        if len(on) >= 2 and len(off) >= 2 and (on.std() > 0 or off.std() > 0):
            ci = stats.ttest_ind(on, off, equal_var=False).confidence_interval(CONFIDENCE)
            row["ci_low"], row["ci_high"] = float(ci.low), float(ci.high)
        rows.append(row)
    return pd.DataFrame(rows, columns=["parameter", "n_on", "n_off", "mean_on", "mean_off", "effect",
                                       "ci_low", "ci_high"]).set_index("parameter")


def reference_setting(sweep: Sweep) -> tuple[dict, str]:
    """The paper's setting as the sweep gives it: its first points_to_evaluate (filled in from the
    base spec), else the base spec's values of the swept keys."""
    base = flatten(config.to_dict(sweep.base_spec()))
    values = {key: base.get(key) for key in sweep.space}
    if sweep.points_to_evaluate:
        values.update(sweep.points_to_evaluate[0])
        return values, "first points_to_evaluate"
    return values, "base spec"


def run_with(finished: pd.DataFrame, values: dict) -> dict | None:
    """The first finished record whose effective spec has these values."""
    for record in finished.to_dict("records"):
        if all(_same_value(record.get(f"spec.{key}"), value) for key, value in values.items()):
            return record
    return None


def best_record(finished: pd.DataFrame, metric: str, mode: str) -> dict | None:
    if finished.empty:
        return None
    index = finished[metric].idxmax() if mode == "max" else finished[metric].idxmin()
    return finished.loc[index].to_dict()


def analyze(found: SweepFolder, metric: str | None = None) -> tuple[Analysis, object]:
    """Everything but the files: (Analysis, the in-memory study)."""
    sweep, records = found.sweep, found.records
    metric = metric or sweep.metric
    check_metric(records, metric, storage.join(found.location, "runs"))
    mode = metric_mode(sweep, metric)
    study = build_study(sweep, records, metric, mode)

    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    counts = {"finished": states.count(TrialState.COMPLETE), "stopped early": states.count(TrialState.PRUNED),
              "failed": states.count(TrialState.FAIL)}
    finished = records[[s == TrialState.COMPLETE for s in states]]
    keys = list(sweep.space)
    table, notes = importances(study, keys)
    table = table.join(toggle_effects(sweep, finished, metric))
    table.insert(0, "type", [sweep.space[k].type for k in keys])
    reference, source = reference_setting(sweep)
    best = best_record(finished, metric, mode)
    table["reference"] = [reference.get(k) for k in keys]
    table["best"] = [best.get(f"spec.{k}") if best else None for k in keys]
    analysis = Analysis(sweep=sweep, location=found.location, metric=metric, mode=mode, counts=counts,
                        top_quantile=top_quantile(counts["finished"]), parameters=table, best=best,
                        reference=reference, reference_source=source, reference_run=run_with(finished, reference),
                        notes=notes, out=found.location)
    return analysis, study


def write_analysis(location, metric: str | None = None, out=None) -> Analysis:
    """Analyse a sweep folder and write analysis.md/.csv, analysis_importance.png, one
    analysis_slice_<parameter>.png per numeric parameter and the study (optuna.journal) into `out`
    (default: the sweep folder; a folder or a URI)."""
    found = read_sweep_folder(location)
    analysis, study = analyze(found, metric)
    out = analysis.out = storage.resolve(out) if out is not None else found.location
    sweep = analysis.sweep
    files = [write_journal(sweep, found.records, out)]
    csv = analysis.parameters.assign(reference=lambda t: t["reference"].map(_show),
                                     best=lambda t: t["best"].map(_show))
    files.append(storage.write_text(out, "analysis.csv", csv.to_csv()))
    files.append(storage.write_file(out, "analysis_importance.png",
                                    lambda path: _plot_importance(analysis, path)))
    for key, param in sweep.space.items():
        if param.type in ("float", "int") and any(key in t.params for t in _complete(study)):
            files.append(storage.write_file(out, f"analysis_slice_{key}.png",
                                            lambda path, key=key: _plot_slice(study, key, analysis.metric, path)))
    files.insert(1, storage.write_text(out, "analysis.md", report(analysis)))
    analysis.files = files
    return analysis


# ------------------------------------------------------------------------ output


def report(analysis: Analysis) -> str:
    a, t = analysis, analysis.parameters
    counts = ", ".join(f"{n} {what}" for what, n in a.counts.items())
    lines = [f"# Sweep analysis: {a.sweep.name}", "",
             (f"{sum(a.counts.values())} trials in {a.location} ({counts}); metric {a.metric} "
              f"({'higher' if a.mode == 'max' else 'lower'} is better)."), "",
             (f"## Which parameter matters (importance, sums to 1; PED-ANOVA: reaching the top "
              f"{a.top_quantile:.0%} of finished trials)"), "",
             "| parameter | type | fANOVA | PED-ANOVA |", "| --- | --- | --- | --- |"]
    order = t.sort_values(["fanova", "ped_anova"], ascending=False, na_position="last").index
    for key in order:
        lines.append(f"| {key} | {t.loc[key, 'type']} | {_num(t.loc[key, 'fanova'])} | {_num(t.loc[key, 'ped_anova'])} |")
    toggles = t[t["type"] == "bool"]
    if not toggles.empty:
        lines += ["", f"## Toggles: {a.metric} with minus without ({CONFIDENCE:.0%} CI, Welch)", "",
                  "| toggle | n on / off | mean on | mean off | effect | 95 % CI | reading |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, row in toggles.iterrows():
            ci = "n/a" if pd.isna(row["ci_low"]) else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            lines.append(f"| {key} | {int(row['n_on'])} / {int(row['n_off'])} | {_num(row['mean_on'])} | "
                         f"{_num(row['mean_off'])} | {_num(row['effect'], signed=True)} | {ci} | "
                         f"{_reading(row, a.mode)} |")
    lines += ["", f"## Best trial beside the reference setting ({a.reference_source})", "",
              f"| | reference | best: {a.best['run_id'] if a.best else 'none finished'} |", "| --- | --- | --- |"]
    for key in t.index:
        lines.append(f"| {key} | {_show(t.loc[key, 'reference'])} | {_show(t.loc[key, 'best'])} |")
    ref_value = _num(a.reference_run[a.metric]) + f" ({a.reference_run['run_id']})" if a.reference_run else "not run"
    for metric in dict.fromkeys([a.metric, "test_acc", "test_map"]):
        if a.best is not None and metric in a.best:
            ref = ref_value if metric == a.metric else _num((a.reference_run or {}).get(metric))
            lines.append(f"| **{metric}** | {ref} | {_num(a.best.get(metric))} |")
    if a.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in a.notes]]
    journal = storage.join(a.out, JOURNAL)
    lines += ["", f"Optuna study: {journal} (open it with `optuna-dashboard {journal}`)"]
    return "\n".join(lines) + "\n"


def _reading(row, mode: str) -> str:
    if pd.isna(row["ci_low"]):
        return "too few trials"
    if row["ci_low"] <= 0 <= row["ci_high"]:
        return "no clear effect"
    better = (row["ci_low"] > 0) == (mode == "max")
    return "helps" if better else "hurts"


def _plot_importance(analysis: Analysis, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = analysis.parameters.sort_values(["fanova", "ped_anova"], ascending=False, na_position="last")
    y = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(t) + 1.5))
    ax.barh(y - 0.2, t["fanova"].fillna(0.0), height=0.4, label="fANOVA", color="tab:blue")
    ax.barh(y + 0.2, t["ped_anova"].fillna(0.0), height=0.4, label="PED-ANOVA", color="tab:orange")
    ax.set_yticks(y, list(t.index), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"importance for {analysis.metric}")
    ax.set_title(f"Sweep {analysis.sweep.name}: parameter importance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _plot_slice(study, key: str, metric: str, path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_slice(study, params=[key], target_name=metric)
    ax = ax.flat[0] if isinstance(ax, np.ndarray) else ax
    ax.set_title(f"{study.study_name}: {metric} against {key}", fontsize=10)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log axes label every minor tick
    fig = ax.figure
    fig.set_size_inches(6, 4)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------ helpers


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _sampled(records: pd.DataFrame, key: str) -> pd.Series:
    return records["params"].map(lambda raw: json.loads(raw).get(key) if isinstance(raw, str) else None)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _timestamp(value) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _same_value(a, b) -> bool:
    """Equality of a record's value and a sweep's value: bools apart from numbers, floats up to rounding."""
    if isinstance(a, (bool, np.bool_)) or isinstance(b, bool):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, bool) and bool(a) == b
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _show(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _num(value, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
