"""Sweep files: a base spec + a search space + metric + budget, validated before Ray starts.

    name: spectrogram_masks
    preset: demo                          # tiny | demo | paper (--preset overrides)
    base: {format: spectrogram}           # spec overrides, dotted or nested
    space:                                # dotted spec key -> distribution
      spectrogram.augment.time_mask.enabled: {type: bool}
      spectrogram.augment.time_mask.max_fraction:
        {type: float, low: 0.02, high: 0.2, when: {spectrogram.augment.time_mask.enabled: true}}
      pretrain.temperature: {type: categorical, choices: [0.1, 0.5, 1.0]}
    metric: valid_map
    mode: max
    budget: {num_samples: 12, max_concurrent_trials: 1, seed: 0}
    scheduler: {type: asha, grace_period: 2}          # optional early stopping
    points_to_evaluate: [{pretrain.temperature: 0.5}]  # tried first (e.g. the paper's values)

Distributions: categorical (choices), float (low, high, log, step), int (low, high, step, log),
bool. `when: {param: value or [values]}` samples a parameter only when every named parameter
(declared earlier in `space`) took one of the given values; otherwise the base value stays.
Every error is one line naming the file and the key. Pure Python: the Ray side is distributed/tune.py.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config
from .config import ExperimentSpec, SpecError


class SweepError(SpecError):
    """A sweep file (or the state of a sweep folder) is invalid; one line naming the key."""


DISTRIBUTIONS = {
    "categorical": {"choices"},
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "step", "log"},
    "bool": set(),
}
SCHEDULERS = {"asha": {"metric", "mode", "grace_period", "reduction_factor", "max_t"}}
_TOP_KEYS = ("name", "preset", "base", "space", "metric", "mode", "budget", "scheduler", "points_to_evaluate")
_BUDGET_KEYS = ("num_samples", "max_concurrent_trials", "seed")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Not hyperparameters: they change where or how fast a run goes, never its result.
_NOT_TUNABLE = ("scaling.", "name", "data.root")


@dataclass(frozen=True)
class Param:
    key: str  # dotted ExperimentSpec key
    type: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: dict[str, tuple] = field(default_factory=dict)  # param -> accepted values

    def sample_values(self) -> list:
        """Values that span the distribution (used to check the key builds a valid spec)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "bool":
            return [True, False]
        return [self.low, self.high]

    def contains(self, value) -> bool:
        if self.type == "categorical":
            return any(_same(value, c) for c in self.choices)
        if self.type == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def suggest(self, trial):
        """Draw a value from an Optuna trial (define-by-run)."""
        name = f"{PARAM_PREFIX}{self.key}"
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "bool":
            return trial.suggest_categorical(name, [True, False])
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)


# Optuna names the parameters "params/<dotted key>"; Tune unflattens "/" so a trial's config
# holds them under config["params"], apart from the rest of the trial's config.
PARAM_PREFIX = "params/"


EPOCH_METRICS = ("pretrain_valid_loss", "pretrain_train_loss")  # what distributed.tune reports every epoch


@dataclass(frozen=True)
class Scheduler:
    type: str = "asha"
    metric: str = "pretrain_valid_loss"  # reported after every pretraining epoch
    mode: str = "min"
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: int | None = None  # default: the pretraining epochs of one trial


@dataclass
class Sweep:
    name: str
    preset: str
    base: dict  # spec overrides applied on the preset
    space: dict[str, Param]  # in file order (conditions refer to earlier parameters)
    metric: str = "valid_map"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent_trials: int = 1
    seed: int = 0
    scheduler: Scheduler | None = None
    points_to_evaluate: list[dict] = field(default_factory=list)
    path: Path | None = None

    def base_spec(self) -> ExperimentSpec:
        return config.preset(self.preset, config.merge(self.base, {"name": self.name}))

    def spec_for(self, params: dict) -> ExperimentSpec:
        """The experiment of one trial: the base spec with the trial's parameters."""
        return config.with_overrides(self.base_spec(), params)

    def active(self, param: Param, values: dict) -> bool:
        return all(ref in values and any(_same(values[ref], v) for v in accepted)
                   for ref, accepted in param.when.items())

    def suggest(self, trial) -> dict:
        """Define-by-run: sample every active parameter in file order; returns {key: value}."""
        values: dict = {}
        for param in self.space.values():
            if self.active(param, values):
                values[param.key] = param.suggest(trial)
        return values

    def optuna_points(self) -> list[dict]:
        return [{f"{PARAM_PREFIX}{k}": v for k, v in point.items()} for point in self.points_to_evaluate]

    def to_dict(self) -> dict:
        """The resolved sweep as plain data (saved beside its results; compared on --resume)."""
        space = {}
        for key, p in self.space.items():
            entry: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                entry["choices"] = list(p.choices)
            elif p.type in ("float", "int"):
                entry.update(low=p.low, high=p.high, log=p.log)
                if p.step is not None:
                    entry["step"] = p.step
            if p.when:
                entry["when"] = {k: list(v) for k, v in p.when.items()}
            space[key] = entry
        out = {"name": self.name, "preset": self.preset, "base": self.base, "space": space,
               "metric": self.metric, "mode": self.mode,
               "budget": {"num_samples": self.num_samples, "max_concurrent_trials": self.max_concurrent_trials,
                          "seed": self.seed},
               "points_to_evaluate": self.points_to_evaluate}
        if self.scheduler is not None:
            out["scheduler"] = dict(vars(self.scheduler))
        return json.loads(json.dumps(out))


# ------------------------------------------------------------------------ loading


def load_sweep(path: str | Path, *, preset: str | None = None, num_samples: int | None = None,
               max_concurrent_trials: int | None = None, base: dict | None = None) -> Sweep:
    """Read and validate a sweep file; keyword arguments override the file (CLI flags)."""
    path = Path(path)
    data = config.load_yaml(path)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with name, space, metric, budget")
    data.setdefault("name", path.stem)
    if preset is not None:
        data["preset"] = preset
    if base:
        data["base"] = config.merge(data.get("base") or {}, base)
    flags = {"num_samples": num_samples, "max_concurrent_trials": max_concurrent_trials}
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags and isinstance(data.get("budget") or {}, dict):
        data["budget"] = {**(data.get("budget") or {}), **flags}
    return sweep_from_dict(data, str(path), path=path)


def sweep_from_dict(data: dict, where: str = "sweep", *, path: Path | None = None) -> Sweep:
    def fail(message: str):
        raise SweepError(f"{where}: {message}")

    for key in data:
        if key not in _TOP_KEYS:
            fail(_unknown(key, _TOP_KEYS))
    name = str(data.get("name") or "sweep")
    if not _NAME.match(name):
        fail(f"name '{name}' must be letters, digits, _ . - (it names the sweep's folder)")
    preset = data.get("preset", "demo")
    if preset not in config.PRESETS:
        fail(f"preset: {_unknown_value(preset, config.PRESETS)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        fail("base: expected a mapping of spec overrides")
    try:
        base_spec = config.preset(preset, config.merge(base, {"name": name}))
    except SpecError as exc:
        fail(f"base: {exc}")

    raw_space = data.get("space")
    if not isinstance(raw_space, dict) or not raw_space:
        fail("space: empty; give at least one parameter, e.g. pretrain.temperature: "
             "{type: float, low: 0.1, high: 1.0}")
    space: dict[str, Param] = {}
    for key, raw in raw_space.items():
        param = _param(str(key), raw, space, [str(k) for k in raw_space], fail)
        for value in param.sample_values():
            try:
                config.with_overrides(base_spec, {param.key: value})
            except SpecError as exc:
                fail(f"space.{param.key}: {exc}")
        space[param.key] = param

    metric = data.get("metric", "valid_map")
    if not isinstance(metric, str) or not metric.startswith("valid_"):
        fail(f"metric: tune on a validation metric such as valid_map or valid_acc, got {metric!r} "
             "(test metrics are reported, never selected on)")
    if metric not in validation_metrics():
        fail(f"metric: {_unknown_value(metric, validation_metrics())}")
    mode = data.get("mode", "max")
    if mode not in ("min", "max"):
        fail(f"mode: must be min or max, got {mode!r}")

    budget = data.get("budget") or {}
    if not isinstance(budget, dict):
        fail("budget: expected a mapping with num_samples, max_concurrent_trials, seed")
    for key in budget:
        if key not in _BUDGET_KEYS:
            fail(f"budget: {_unknown(key, _BUDGET_KEYS)}")
    counts = {}
    for key, default, low in (("num_samples", 8, 1), ("max_concurrent_trials", 1, 1), ("seed", 0, 0)):
        value = budget.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(f"budget.{key}: expected an integer >= {low}, got {value!r}")
        counts[key] = value

    sweep = Sweep(name=name, preset=preset, base=base, space=space, metric=metric, mode=mode,
                  scheduler=_scheduler(data.get("scheduler"), fail), path=path, **counts)
    sweep.points_to_evaluate = _points(data.get("points_to_evaluate"), sweep, fail)
    return sweep


def validation_metrics() -> tuple[str, ...]:
    """The valid_ metrics a run records, single- or multi-label (metrics.metric_names)."""
    from .metrics import recorded_metric_names

    return recorded_metric_names("valid")


def _param(key: str, raw, declared: dict[str, Param], all_keys: list[str], fail) -> Param:
    where = f"space.{key}"
    if key.startswith(_NOT_TUNABLE):
        fail(f"{where}: not a hyperparameter (scaling, paths and the name do not change results); "
             "set it in base")
    if not isinstance(raw, dict) or "type" not in raw:
        fail(f"{where}: expected a distribution such as {{type: float, low: 0.1, high: 1.0}}")
    kind = raw["type"]
    if kind not in DISTRIBUTIONS:
        fail(f"{where}.type: {_unknown_value(kind, DISTRIBUTIONS)}")
    allowed = DISTRIBUTIONS[kind] | {"type", "when"}
    for name in raw:
        if name not in allowed:
            fail(f"{where}: {_unknown(name, sorted(allowed))} for type {kind}")
    fields: dict[str, Any] = {}
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            fail(f"{where}.choices: expected a non-empty list")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                fail(f"{where}.choices: {choice!r} is not a number, string, bool or null")
        fields["choices"] = tuple(choices)
    elif kind in ("float", "int"):
        numeric = (int,) if kind == "int" else (int, float)
        for bound in ("low", "high"):
            value = raw.get(bound)
            if isinstance(value, bool) or not isinstance(value, numeric):
                fail(f"{where}.{bound}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
        low, high = raw["low"], raw["high"]
        if kind == "float":
            low, high = float(low), float(high)
        if low > high or (kind == "float" and low == high):
            fail(f"{where}: low {low} must be below high {high}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            fail(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            fail(f"{where}: log scale needs low > 0, got {low}")
        step = raw.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, numeric) or step <= 0:
                fail(f"{where}.step: expected a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
            if log:
                fail(f"{where}: step and log cannot be combined")
        fields.update(low=low, high=high, log=log, step=step)
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        fail(f"{where}.when: expected a mapping {{parameter: value}}")
    conditions = {}
    for ref, accepted in when.items():
        ref = str(ref)
        if ref not in declared:
            close = difflib.get_close_matches(ref, list(declared), n=1)
            hint = (" (declare it before this one)" if ref in all_keys
                    else f" (did you mean '{close[0]}'?)" if close else "")
            fail(f"{where}.when: '{ref}' is not a parameter declared earlier in space{hint}")
        values = tuple(accepted) if isinstance(accepted, list) else (accepted,)
        for value in values:
            if not declared[ref].contains(value):
                fail(f"{where}.when.{ref}: {value!r} is not a value {ref} can take")
        conditions[ref] = values
    return Param(key=key, type=kind, when=conditions, **fields)


def _scheduler(raw, fail) -> Scheduler | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "type" not in raw:
        fail("scheduler: expected a mapping such as {type: asha, grace_period: 2}")
    kind = raw["type"]
    if kind not in SCHEDULERS:
        fail(f"scheduler.type: {_unknown_value(kind, SCHEDULERS)}")
    allowed = SCHEDULERS[kind] | {"type"}
    for name in raw:
        if name not in allowed:
            fail(f"scheduler: {_unknown(name, sorted(allowed))}")
    fields = {k: v for k, v in raw.items() if k != "type"}
    for name in ("grace_period", "reduction_factor", "max_t"):
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"scheduler.{name}: expected an integer >= 1, got {value!r}")
    if fields.get("reduction_factor", 2) < 2:
        fail("scheduler.reduction_factor: must be >= 2")
    if fields.get("mode", "min") not in ("min", "max"):
        fail(f"scheduler.mode: must be min or max, got {fields['mode']!r}")
    if "metric" in fields and fields["metric"] not in EPOCH_METRICS:
        fail(f"scheduler.metric: {_unknown_value(fields['metric'], EPOCH_METRICS)} (what a trial reports after "
             "every pretraining epoch; its valid_ metrics come only at its end)")
    return Scheduler(type=kind, **fields)


def _points(raw, sweep: Sweep, fail) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        fail("points_to_evaluate: expected a list of {parameter: value} mappings")
    points = []
    for i, point in enumerate(raw):
        where = f"points_to_evaluate[{i}]"
        if not isinstance(point, dict) or not point:
            fail(f"{where}: expected a non-empty mapping {{parameter: value}}")
        for key, value in point.items():
            if key not in sweep.space:
                fail(f"{where}: {_unknown(key, list(sweep.space))}")
            param = sweep.space[key]
            if not param.contains(value):
                fail(f"{where}.{key}: {value!r} is outside the parameter's distribution")
            for ref, accepted in param.when.items():
                if ref in point and not any(_same(point[ref], v) for v in accepted):
                    fail(f"{where}.{key}: never used, since {ref} is {point[ref]!r} (it needs {list(accepted)})")
        try:
            sweep.spec_for(point)
        except SpecError as exc:
            fail(f"{where}: {exc}")
        points.append(dict(point))
    return points


# ------------------------------------------------------------------------ helpers


def _same(a, b) -> bool:
    """Equality that keeps True apart from 1 (YAML bools vs numbers)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _unknown(key, valid) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(map(str, valid))})"
    return f"unknown key '{key}'{hint}"


def _unknown_value(value, valid) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'{value}' is not one of {', '.join(map(str, valid))}{hint}"
