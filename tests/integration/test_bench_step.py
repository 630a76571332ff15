"""The training-step benchmark runs end to end on CPU and prints its table."""

import pytest

from clmr_ray.bench import step


def test_step_benchmark_measures_both_encoders(capsys):
    rows = step.run("tiny", "cpu", batch=2, steps=1, warmup=0, count_flops=True)
    assert [r["format"] for r in rows] == ["audio", "spectrogram"]
    assert all(r["crops_per_s"] > 0 and r["gflop_per_step"] > 0 for r in rows)
    assert "crops_per_s" in step.format_table(rows)


def test_step_benchmark_command_line(capsys):
    assert step.main(["--preset", "tiny", "--formats", "audio", "--steps", "1", "--warmup", "0", "--batch", "2"]) == 0
    assert "samplecnn" in capsys.readouterr().out
    for argv, message in ((["--preset", "huge"], "unknown preset 'huge'"),
                          (["--formats", "image"], "unknown format 'image'")):
        with pytest.raises(SystemExit):
            step.main(argv)
        assert message in capsys.readouterr().err
