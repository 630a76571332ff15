from pathlib import Path

import pytest

from clmr_ray import config
from clmr_ray.ablation_files import expand, load_ablation
from clmr_ray.config import SpecError
from clmr_ray.experiment import encoder_key

ABLATIONS = Path(__file__).resolve().parents[2] / "ablations"


@pytest.mark.parametrize("path", sorted(p for p in ABLATIONS.glob("*.yaml") if p.name != "findings.yaml")
                         + sorted(ABLATIONS.glob("extras/*.yaml"))
                         + sorted(p for p in ABLATIONS.glob("studies/*.yaml") if p.name != "findings.yaml"),
                         ids=lambda p: p.name)
def test_every_shipped_ablation_loads_and_expands(path):
    ablation = load_ablation(path)
    runs = expand(ablation, "tiny")
    assert len(runs) == len(ablation.rows) * len(ablation.seeds)
    assert len(expand(ablation, "demo")) == len(ablation.rows) * 3  # the demo scale runs seeds 0, 1 and 2
    assert len({r.run_id for r in runs}) == len(runs)


def test_table1_rows_toggle_the_papers_augmentations():
    runs = {(r.row, r.seed): r.spec for r in expand(load_ablation(ABLATIONS / "table1.yaml"), "demo")}
    crop = runs[("audio_crop", 0)].audio.augment.enabled_names()
    assert crop == ["crop"]
    assert runs[("audio_crop_noise", 0)].audio.augment.enabled_names() == ["crop", "noise"]
    assert runs[("spectrogram_time_mask", 0)].spectrogram.augment.enabled_names() == ["crop", "time_mask"]
    assert runs[("audio_all", 1)].seed == 1


def test_table2_reuses_table1_encoders_and_transfers():
    t1 = {r.row: r.spec for r in expand(load_ablation(ABLATIONS / "table1.yaml"), "demo", seeds=[0])}
    t2 = {r.row: r.spec for r in expand(load_ablation(ABLATIONS / "table2.yaml"), "demo", seeds=[0])}
    assert encoder_key(t2["audio_gtzan"], "audio") == encoder_key(t1["audio_all"], "audio")
    assert encoder_key(t2["both"], "spectrogram") == encoder_key(t1["spectrogram_all"], "spectrogram")
    assert encoder_key(t2["both"], "audio") == encoder_key(t1["audio_all"], "audio")
    assert t2["audio_mtat"].pretrain_data.dataset == "synthetic_tags"
    assert encoder_key(t2["audio_mtat"], "audio") != encoder_key(t1["audio_all"], "audio")


def test_paper_scale_needs_dataset_folders(monkeypatch):
    ablation = load_ablation(ABLATIONS / "table2.yaml")
    monkeypatch.delenv("GTZAN_ROOT", raising=False)
    with pytest.raises(SpecError, match=r"dataset 'gtzan' needs its folder: pass --gtzan-root PATH or set \$GTZAN_ROOT"):
        expand(ablation, "paper")
    monkeypatch.setenv("GTZAN_ROOT", "/data/gtzan")
    monkeypatch.setenv("MTAT_ROOT", "/data/mtat")
    runs = {r.row: r.spec for r in expand(ablation, "paper", seeds=[0])}
    assert runs["audio_mtat"].pretrain_data.dataset == "mtat"
    assert runs["audio_mtat"].pretrain_data.root == "/data/mtat"
    assert runs["both"].data.root == "/data/gtzan" and runs["both"].scaling.use_gpu


@pytest.mark.parametrize("text, message", [
    ("rows: []\n", "'rows' must be a non-empty list"),
    ("rows:\n  - {id: a, overrides: {pretrain.temprature: 1}}\n",
     "row 'a': unknown key 'pretrain.temprature' (did you mean 'temperature'?)"),
    ("rows:\n  - {id: a, overrides: {audio.augment.reverse: {enabled: true}}}\n", "unknown key 'audio.augment.reverse'"),
    ("rows:\n  - {id: a}\n  - {id: a}\n", "rows[1].id 'a' is used twice"),
    ("seeds: [0, x]\nrows:\n  - {id: a}\n", "'seeds' must be a non-empty list of integers"),
    ("seeds: [0, 0]\nrows:\n  - {id: a}\n", "'seeds' must be distinct integers >= 0 (one run each), got [0, 0]"),
    ("seeds: [-1]\nrows:\n  - {id: a}\n", "'seeds' must be distinct integers >= 0"),
    ("rowz: []\n", "unknown key 'rowz'"),
    ("metrics: [valid_mAP]\nrows:\n  - {id: a}\n", "metrics: 'valid_mAP' is no metric a run records (did you mean 'valid_map'?)"),
    ("rows:\n  - {id: a, overrides: {pretrain_data: mtat}}\n", "use the word 'transfer'"),
])
def test_bad_ablation_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_ablation(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_preset():
    with pytest.raises(SpecError, match="unknown preset 'demoo'"):
        expand(load_ablation(ABLATIONS / "table1.yaml"), "demoo")
    assert config.preset("demo").data.sample_rate == 8000
