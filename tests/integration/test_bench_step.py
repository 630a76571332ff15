"""The training-step and epoch benchmarks run end to end on CPU and print their tables."""

import json
import subprocess
import sys

import pytest
import torch

from clmr_ray.bench import epoch, step


def test_step_benchmark_measures_both_encoders(capsys):
    rows = step.run("tiny", "cpu", batch=2, steps=1, warmup=0, count_flops=True)
    assert [r["format"] for r in rows] == ["audio", "spectrogram"]
    assert all(r["crops_per_s"] > 0 and r["gflop_per_step"] > 0 for r in rows)
    assert "crops_per_s" in step.format_table(rows)
    for r in rows:  # the split of one step: every phase took some time, augmentation's share in between
        assert all(r[k] > 0 for k in ("augment_ms", "encoder_ms", "loss_ms", "optimizer_ms"))
        assert 0 < r["augment_pct"] < 100
    assert "peak_share_pct" not in rows[0]  # no peak known for a CPU
    with_peak = step.measure("tiny", "audio", "cpu", batch=2, steps=1, warmup=0, count_flops=True, split=False,
                             peak=1.0)
    assert with_peak["peak_share_pct"] == pytest.approx(100 * with_peak["tflop_per_s"])
    assert "augment_ms" not in with_peak


def test_step_benchmark_command_line(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert step.main(["--preset", "tiny", "--formats", "audio", "--steps", "1", "--warmup", "0", "--batch", "2",
                      "--without", "all", "--json", str(out)]) == 0
    assert "samplecnn" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["speedups"] == "none"
    assert step.main(["--preset", "tiny", "--formats", "audio", "--steps", "1", "--warmup", "0", "--batch", "2",
                      "--with", "views_in_one_call", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["speedups"] == "reuse_host_memory,views_in_one_call" and row["augment_ms"] > 0
    for argv, message in ((["--preset", "huge"], "unknown preset 'huge'"),
                          (["--with", "graphs"], "--with: speed-up 'graphs' is not one of"),
                          (["--formats", "image"], "unknown format 'image'"),
                          (["--without", "graphs"], "--without: speed-up 'graphs' is not one of"),
                          (["--peak-tflops", "0"], "--peak-tflops: must be > 0")):
        with pytest.raises(SystemExit):
            step.main(argv)
        assert message in capsys.readouterr().err


def test_deterministic_flag_turns_on_deterministic_algorithms(capsys, tmp_path):
    out = tmp_path / "rows.json"
    try:
        step.main(["--preset", "tiny", "--formats", "audio", "--steps", "1", "--warmup", "0", "--batch", "2",
                   "--no-split", "--deterministic", "--json", str(out)])
    finally:
        torch.use_deterministic_algorithms(False)
    assert json.loads(out.read_text())[0]["deterministic"] is True


def test_benchmarks_import_nothing_a_bare_gpu_machine_lacks():
    """The GPU machine has torch, torchaudio, torchvision, numpy, pandas, pyarrow and yaml only."""
    code = ("import sys, clmr_ray.bench.step, clmr_ray.bench.augment, clmr_ray.bench.epoch; "
            "print(','.join(m for m in ('ray', 'optuna', 'soundfile') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_compiled_encoder_reports_its_compile_time_and_falls_back_when_compiling_fails():
    def broken(graph_module, example_inputs):
        raise RuntimeError("this backend makes no kernels")

    try:
        compiled = step.measure("tiny", "audio", "cpu", batch=2, steps=1, warmup=0, split=False,
                                compile_backend="eager")
        failed = step.measure("tiny", "audio", "cpu", batch=2, steps=1, warmup=0, split=False,
                              compile_backend=broken)
    finally:
        torch._dynamo.reset()
    assert compiled["compile"] == "eager" and compiled["compile_s"] > 0
    assert failed["compile"].startswith("failed (") and "\n" not in failed["compile"]
    assert failed["crops_per_s"] > 0


def test_epoch_benchmark_sets_a_real_epoch_beside_the_step(capsys, tmp_path):
    split = epoch.noise_split(tracks=3, seconds=1.0, sample_rate=8000)
    assert split.n_tracks == 3 and split.audio.dtype.name == "int16" and split.lengths.tolist() == [8000] * 3
    out = tmp_path / "rows.json"
    assert epoch.main(["--preset", "tiny", "--formats", "audio", "--tracks", "16", "--steps", "1",
                       "--json", str(out)]) == 0
    assert "epoch_share_pct" in capsys.readouterr().out
    row = json.loads(out.read_text())[0]
    assert row["tracks"] == 16 and row["steps_per_epoch"] == 2
    assert row["epoch_crops_per_s"] > 0 and row["step_crops_per_s"] > 0
    assert row["epoch_share_pct"] == pytest.approx(100 * row["epoch_crops_per_s"] / row["step_crops_per_s"])
    for argv, message in ((["--preset", "huge"], "unknown preset 'huge'"),
                          (["--formats", "image"], "unknown format 'image'"),
                          (["--seconds", "0.1"], "--seconds: 0.1 s is shorter than one crop"),
                          (["--tracks", "1"], "--tracks >= 2")):
        with pytest.raises(SystemExit):
            epoch.main(argv)
        assert message in capsys.readouterr().err


def test_augment_benchmark_times_the_same_draws_for_each_seed(capsys):
    """Best-of-N over changing draws would time the call that drew the fewest crops for the costly
    augmentations; each seed's repeats must repeat the same work."""
    from clmr_ray.bench import augment

    seen = []
    augment._seconds(seen.append, torch.device("cpu"), seeds=3, repeats=2, warmup=1)
    assert seen == [0, 0, 0, 1, 1, 2, 2]

    result = augment.main(["--preset", "tiny", "--batch", "4", "--device", "cpu", "--seeds", "2", "--repeats", "1",
                           "--no-ops"])
    assert result["seeds"] == 2 and result["audio"]["batched_crops_per_s"] > 0
    assert "graph_ms" not in result["audio"]  # CUDA graphs on CUDA only
    out = capsys.readouterr().out
    assert "mean over 2 seeds of the best of 1 calls" in out and "% of the log-mel's throughput timed apart" in out
    assert 0 < result["audio_share_interleaved"] and "% with their calls alternating" in out
    rates = augment.filter_methods(0.1 * torch.randn(3, 500), 8000, seeds=1, repeats=1)
    assert list(rates) == ["blocks", "fft", "recursive"] and all(r > 0 for r in rates.values())
    assert "biquad_filter on every crop: blocks" in augment.report({**result, "filter_methods": rates})
    for argv, message in ((["--seeds", "0"], "--seeds: must be >= 1"), (["--batch", "1"], "--batch: noise mixing")):
        with pytest.raises(SystemExit):
            augment.main(argv)
        assert message in capsys.readouterr().err
