"""Parquet run records -> the paper's tables, with the paper's numbers beside ours.

For every (table, row): mean, std and n over seeds of each metric with its 95 % interval (seeds +
a bootstrap over test tracks, findings.row_interval), the published value in the next column, and
the run ids behind the cell. Rows without records show as missing, never 0.
Written as Parquet, CSV and Markdown, plus a PNG bar chart per table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# The paper's published numbers. "mAP" is measured on the validation set and "test accuracy"
# on the test set (section 4.1), so they sit beside our valid_map and test_acc.
PAPER_ROWS = [
    # table, row id, label, format, pretraining data, valid mAP, test accuracy
    ("table1", "audio_crop", "only enable random sample", "audio", "GTZAN", 0.115, 0.111),
    ("table1", "audio_crop_noise", "enable random sample + white Gaussian noise", "audio", "GTZAN", 0.127, 0.103),
    ("table1", "audio_all", "enable all transformations", "audio", "GTZAN", 0.219, 0.377),
    ("table1", "spectrogram_time_mask", "only enable time masking", "spectrogram", "GTZAN", 0.249, 0.351),
    ("table1", "spectrogram_all", "enable all transformations", "spectrogram", "GTZAN", 0.312, 0.482),
    ("table2", "audio_gtzan", "only use audio", "audio", "GTZAN", 0.269, 0.377),
    ("table2", "audio_mtat", "only use audio", "audio", "MagnaTagATune", 0.193, 0.191),
    ("table2", "spectrogram", "only use spectrogram", "spectrogram", "GTZAN", 0.312, 0.482),
    ("table2", "both", "use both audio and spectrogram", "both", "GTZAN", 0.340, 0.531),
]
PAPER_METRICS = {"valid_map": "paper_valid_map", "test_acc": "paper_test_acc"}
DEFAULT_METRICS = ["valid_map", "test_acc", "test_map"]
CELL_NOTE = ("Cells: mean ± std over seeds [95% interval: seeds + a bootstrap over the split's tracks]; "
             "n = runs (seeds).")


def paper_reference() -> pd.DataFrame:
    frame = pd.DataFrame(PAPER_ROWS, columns=["table", "row", "paper_label", "format", "pretraining_data",
                                              "paper_valid_map", "paper_test_acc"])
    return frame.astype({"paper_valid_map": "float64", "paper_test_acc": "float64"})


def build_table(records: pd.DataFrame, table: str, metrics: list[str] | None = None, boot=None) -> pd.DataFrame:
    """One row per (table, row): label, n, <metric>_mean/_std/_ci_low/_ci_high, paper values, run ids."""
    from .findings import TrackBootstrap, row_interval

    metrics = metrics or DEFAULT_METRICS
    boot = boot or TrackBootstrap()
    reference = paper_reference()
    reference = reference[reference["table"] == table]
    mine = records[records["table"] == table] if not records.empty and "table" in records else pd.DataFrame()

    order = list(reference["row"])
    if not mine.empty:
        order += [r for r in dict.fromkeys(mine["row"]) if r not in order]
    out = []
    for row in order:
        runs = mine[mine["row"] == row] if not mine.empty else pd.DataFrame()
        ref = reference[reference["row"] == row]
        label = (runs["label"].iloc[0] if "label" in runs and len(runs) else
                 ref["paper_label"].iloc[0] if len(ref) else row)
        entry = {"table": table, "row": row, "label": label, "n": len(runs)}
        for metric in metrics:
            values = runs[metric].astype(float) if metric in runs else pd.Series(dtype=float)
            values = values.dropna()
            entry[f"{metric}_mean"] = float(values.mean()) if len(values) else np.nan
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            interval = row_interval(runs, metric, boot) if len(values) else None
            entry[f"{metric}_ci_low"] = interval.low if interval else np.nan
            entry[f"{metric}_ci_high"] = interval.high if interval else np.nan
            if metric in PAPER_METRICS:
                entry[PAPER_METRICS[metric]] = float(ref[PAPER_METRICS[metric]].iloc[0]) if len(ref) else np.nan
        entry["run_ids"] = ",".join(sorted(runs["run_id"])) if len(runs) else ""
        out.append(entry)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """A Markdown table: 'mean ± std [95% interval]' cells, the paper's value beside each metric it reports."""
    metrics = metrics or [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    header = ["row", "n"]
    for metric in metrics:
        header.append(metric)
        if metric in PAPER_METRICS:
            header.append(f"paper {metric}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(r["label"]), str(r["n"])]
        for metric in metrics:
            cells.append(_cell(r[f"{metric}_mean"], r.get(f"{metric}_std"), r.get(f"{metric}_ci_low"),
                               r.get(f"{metric}_ci_high")))
            if metric in PAPER_METRICS:
                cells.append(_cell(r.get(PAPER_METRICS[metric]), None))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean, std, low=None, high=None) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{mean:.3f}" if std is None or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"
    if low is not None and not pd.isna(low):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def plot_table(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Bar chart: our mean (error bar = its 95 % interval) beside the paper's value, per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(m, p) for m, p in PAPER_METRICS.items() if f"{m}_mean" in table]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 0.6 * len(table) + 2.0), squeeze=False)
    y = np.arange(len(table))
    for ax, (metric, paper) in zip(axes[0], pairs):
        ours = table[f"{metric}_mean"].astype(float).fillna(0.0)
        low = (ours - table[f"{metric}_ci_low"].astype(float)).clip(lower=0).fillna(0.0)
        high = (table[f"{metric}_ci_high"].astype(float) - ours).clip(lower=0).fillna(0.0)
        ax.barh(y - 0.2, ours, height=0.4, xerr=[low, high], label="clmr-ray (mean, 95% interval)", color="tab:blue")
        ax.barh(y + 0.2, table[paper].astype(float).fillna(0.0), height=0.4, label="paper", color="tab:gray")
        missing = table[f"{metric}_mean"].isna()
        for i in np.flatnonzero(missing.to_numpy()):
            ax.text(0.005, y[i] - 0.2, "no runs", va="center", fontsize=8)
        ax.set_yticks(y, [str(label)[:48] for label in table["label"]], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_tables(records: pd.DataFrame, out_dir, tables: dict[str, str] | None = None,
                 metrics: list[str] | None = None) -> dict[str, dict[str, Path]]:
    """Write <table>.parquet/.csv/.md/.png for each table (default: every table present in the
    records, table1 and table2 first); `tables` maps table name -> title. Returns the paths.
    DatasetError when no record names a table, or when a row's records are runs of several setups
    (results.mixed_setups): a cell's mean over them would not be over seeds."""
    from .data.base import DatasetError
    from .results import mixed_setups

    present = [str(t) for t in records["table"].dropna().unique()] if "table" in records else []
    if not records.empty and not present:
        raise DatasetError(f"none of the {len(records)} records is from an ablation (no table named in them: sweep "
                           "trials?); build tables from `clmr-ray ablate` records, or analyze a sweep with "
                           "`clmr-ray analyze <sweep folder>`")
    mixed = mixed_setups(records)
    if mixed:
        more = f"; {len(mixed) - 1} more rows too" if len(mixed) > 1 else ""
        raise DatasetError(f"{mixed[0]}{more}: a cell averages the seeds of one setup, so keep each setup's records "
                           "in their own --results folder (or delete the others' from runs/)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tables is not None:
        names = dict(tables)
    else:  # both of the paper's tables when a record is from one of them (or none names a table), then the rest
        paper = {"table1": "Table 1", "table2": "Table 2"}
        names = paper if not present or set(paper) & set(present) else {}
        names.update({t: t for t in present if t not in names})
    from .findings import TrackBootstrap
    from .results import machine_summary

    boot = TrackBootstrap()  # each run's resampled metrics computed once for every table
    written = {}
    for name, title in names.items():
        table = build_table(records, name, metrics, boot)
        paths = {
            "parquet": out_dir / f"{name}.parquet",
            "csv": out_dir / f"{name}.csv",
            "md": out_dir / f"{name}.md",
            "png": out_dir / f"{name}.png",
        }
        table.to_parquet(paths["parquet"], index=False)
        table.to_csv(paths["csv"], index=False)
        mine = records[records["table"] == name] if "table" in records else records.iloc[:0]
        machines = f"Records from: {'; '.join(machine_summary(mine))}.\n" if not mine.empty else ""
        paths["md"].write_text(f"## {title}\n\n{to_markdown(table, metrics)}\n\n{CELL_NOTE}\n{machines}")
        plot_table(table, paths["png"], title)
        written[name] = paths
    return written
