import math

import pandas as pd

from clmr_ray.tables import PAPER_ROWS, build_table, paper_reference, to_markdown, write_tables


def _records():
    rows = []
    for row, accs in {"audio_all": [0.30, 0.40, 0.50], "spectrogram_all": [0.6, 0.7]}.items():
        for seed, acc in enumerate(accs):
            rows.append({"run_id": f"table1-{row}-s{seed}", "table": "table1", "row": row, "label": row,
                         "seed": seed, "test_acc": acc, "valid_map": acc / 2, "test_map": acc / 3})
    rows.append({"run_id": "table1-custom-s0", "table": "table1", "row": "custom", "label": "my row",
                 "seed": 0, "test_acc": 0.9, "valid_map": 0.8, "test_map": 0.7})
    return pd.DataFrame(rows)


def test_paper_reference_is_typed_and_complete():
    ref = paper_reference()
    assert len(ref) == len(PAPER_ROWS) == 9
    assert ref["paper_test_acc"].dtype == "float64"
    both = ref[(ref["table"] == "table2") & (ref["row"] == "both")].iloc[0]
    assert (both["paper_valid_map"], both["paper_test_acc"]) == (0.340, 0.531)


def test_means_over_seeds_and_missing_rows_are_missing_not_zero():
    table = build_table(_records(), "table1").set_index("row")
    assert list(table.index[:5]) == ["audio_crop", "audio_crop_noise", "audio_all", "spectrogram_time_mask",
                                     "spectrogram_all"]
    assert table.loc["audio_all", "n"] == 3
    assert math.isclose(table.loc["audio_all", "test_acc_mean"], 0.4)
    assert math.isclose(table.loc["audio_all", "test_acc_std"], pd.Series([0.3, 0.4, 0.5]).std())
    assert table.loc["audio_all", "paper_test_acc"] == 0.377
    assert table.loc["audio_crop", "n"] == 0 and pd.isna(table.loc["audio_crop", "test_acc_mean"])
    assert table.loc["custom", "label"] == "my row" and pd.isna(table.loc["custom", "paper_test_acc"])
    assert table.loc["spectrogram_all", "run_ids"] == "table1-spectrogram_all-s0,table1-spectrogram_all-s1"
    text = to_markdown(build_table(_records(), "table1"))
    assert "| only enable random sample | 0 | — |" in text
    assert "0.400 ± 0.100" in text


def test_write_tables_files(tmp_path):
    written = write_tables(_records(), tmp_path)
    assert set(written) == {"table1", "table2"}
    for paths in written.values():
        for path in paths.values():
            assert path.stat().st_size > 0
    again = pd.read_parquet(written["table1"]["parquet"])
    assert len(again) == 6
    assert (tmp_path / "table1.png").read_bytes()[:4] == b"\x89PNG"
    empty = pd.read_parquet(written["table2"]["parquet"])
    assert (empty["n"] == 0).all() and empty["test_acc_mean"].isna().all()


def test_committed_reference_files_match_the_code():
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "results"
    pd.testing.assert_frame_equal(pd.read_parquet(results / "paper_reference.parquet"), paper_reference())
    pd.testing.assert_frame_equal(pd.read_csv(results / "paper_reference.csv"), paper_reference())


def _spec_records(temperatures: list[float]) -> pd.DataFrame:
    """table1/audio_all records with real specs: one seed per temperature, each on its own machine and path."""
    import json

    from clmr_ray import config

    rows = []
    for seed, temperature in enumerate(temperatures):
        spec = config.preset("tiny", {"seed": seed, "pretrain.temperature": temperature, "data.root": f"/node{seed}",
                                      "scaling.cpus_per_worker": seed + 1, "name": f"n{seed}"})
        rows.append({"run_id": f"table1-audio_all-s{seed}", "table": "table1", "row": "audio_all", "label": "all",
                     "seed": seed, "test_acc": 0.3, "valid_map": 0.2, "test_map": 0.1,
                     "spec_json": json.dumps(config.to_dict(spec), sort_keys=True)})
    return pd.DataFrame(rows)


def test_a_cell_pools_seeds_of_one_setup_and_refuses_two(tmp_path):
    import pytest

    from clmr_ray.data.base import DatasetError

    seeds_only = write_tables(_spec_records([0.1, 0.1, 0.1]), tmp_path)  # seed, name, scaling, paths may differ
    assert pd.read_parquet(seeds_only["table1"]["parquet"]).set_index("row").loc["audio_all", "n"] == 3
    with pytest.raises(DatasetError) as refused:
        write_tables(_spec_records([0.1, 0.1, 0.5]), tmp_path / "mixed")
    message = str(refused.value)
    assert "table1 row 'audio_all' holds runs of 2 setups" in message and "pretrain.temperature: 0.1 vs 0.5" in message
    assert "\n" not in message and not (tmp_path / "mixed").exists()


def test_records_of_no_table_are_refused_not_written_as_empty_tables(tmp_path):
    import pytest

    from clmr_ray.data.base import DatasetError

    sweep = _records().assign(table=None)
    with pytest.raises(DatasetError, match=r"none of the 6 records is from an ablation .*clmr-ray analyze"):
        write_tables(sweep, tmp_path)
    assert not any(tmp_path.iterdir())
