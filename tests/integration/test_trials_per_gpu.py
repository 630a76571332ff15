"""Trials packed on GPUs, on a local Ray with fake GPU resources (the runs fall back to the CPU, so
what is tested is Ray's scheduling: 4 runs at once, 2 per card, each seeing only its card)."""

from collections import Counter

import pytest
import ray

from clmr_ray.ablation_files import load_ablation
from clmr_ray.cli import main
from clmr_ray.distributed.ablate import run_ablation
from clmr_ray.results import read_records

ABLATION = """\
name: packed
seeds: [0, 1, 2, 3]
base:
  scaling.use_gpu: true
  pretrain.epochs: 1
  eval.epochs: 3
  audio.augment.pitch.enabled: false
rows:
  - id: audio
    label: audio
    overrides: {format: audio}
"""


@pytest.fixture
def fake_gpu_ray():
    ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def ablation_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    path = tmp_path / "packed.yaml"
    path.write_text(ABLATION)
    return path


@pytest.mark.filterwarnings("ignore:scaling.use_gpu is set but CUDA is not available")
def test_four_runs_share_two_gpus_two_per_card(fake_gpu_ray, ablation_file, tmp_path):
    lines = []
    outcome = run_ablation(load_ablation(ablation_file), "tiny", results_dir=tmp_path / "results",
                           trials_per_gpu=2, log=lines.append)
    assert not outcome.failed and len(outcome.finished) == 4

    records = read_records(tmp_path / "results" / "runs")
    assert len(records) == 4
    # all four ran at once: the last to start started before the first to finish finished
    assert records["trial_started_at"].max() < records["trial_finished_at"].min()
    # each saw one card, two runs per card
    assert Counter(records["cuda_visible_devices"]) == {"0": 2, "1": 2}
    assert (records["spec.scaling.gpus_per_trial"] == 0.5).all()
    assert (records["device"] == "cpu").all()  # no CUDA here: the runs fell back to the CPU
    assert any("2 trials per GPU (0.5 GPU each)" in line and "not checked" in line for line in lines)
    assert any(line.endswith("4 runs at a time, 2 per GPU (0.5 GPU each)") for line in lines)


def test_a_packing_that_cannot_fit_is_refused_before_any_run(ablation_file, tmp_path, capsys):
    ray.shutdown()
    results = tmp_path / "results"
    code = main(["ablate", str(ablation_file), "--preset", "tiny", "--results", str(results),
                 "--trials-per-gpu", "4", "--gpu-memory-gib", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clmr-ray: error: --trials-per-gpu 4: 4 trials need about")
    assert not ray.is_initialized() and not (results / "runs").exists() and not (tmp_path / "data").exists()


def test_packing_runs_that_use_no_gpu_is_refused(ablation_file, tmp_path, capsys):
    ray.shutdown()
    code = main(["ablate", str(ablation_file), "--preset", "tiny", "--results", str(tmp_path / "results"),
                 "--trials-per-gpu", "2", "--set", "scaling.use_gpu=false"])
    assert code == 2
    assert "the runs do not use a GPU" in capsys.readouterr().err
    assert not ray.is_initialized()


SWEEP = """\
name: packed_sweep
preset: tiny
base: {scaling.use_gpu: true, format: audio}
space:
  eval.batch_size: {type: categorical, choices: [256, 4096]}
budget: {num_samples: 2, max_concurrent_trials: 2}
"""


def test_a_sweep_packing_that_cannot_fit_at_its_largest_eval_batch_is_refused(tmp_path, monkeypatch, capsys):
    ray.shutdown()
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    path = tmp_path / "packed_sweep.yaml"
    path.write_text(SWEEP)
    storage = tmp_path / "sweeps"
    code = main(["sweep", str(path), "--storage", str(storage), "--trials-per-gpu", "2", "--gpu-memory-gib", "1.9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--trials-per-gpu 2: 2 trials need about" in err  # eval batch 256 alone would fit 2 in 1.7 GiB
    assert not ray.is_initialized() and not storage.exists()
