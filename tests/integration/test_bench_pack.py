"""bench scaling pack: N trials' steps at once on one device, without Ray (the GPU machine has none)."""

import subprocess
import sys

import pytest

from clmr_ray.bench.scaling import main

NO_RAY = "import sys; sys.modules['ray'] = None; from clmr_ray.bench.scaling import main; raise SystemExit(main({}))"


def test_pack_sweep_runs_without_ray_and_reports_throughput_and_trials_per_hour():
    argv = ["pack", "--preset", "tiny", "--device", "cpu", "--trials", "1", "2", "--seconds", "0.5", "--warmup", "1"]
    done = subprocess.run([sys.executable, "-c", NO_RAY.format(argv)], capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("trials packed on one cpu, preset tiny")
    header = lines[1].split()
    for column in ("trials", "crops_per_s", "trial_crops_per_s", "est_mem_gib", "trials_per_h", "speedup"):
        assert column in header
    rows = [dict(zip(header, line.split())) for line in lines[2:]]
    assert [r["trials"] for r in rows] == ["1", "2"]
    assert float(rows[0]["speedup"]) == 1.0 and all(float(r["crops_per_s"]) > 0 for r in rows)


@pytest.mark.parametrize("bad", [["--trials", "0"], ["--seconds", "0"], ["--preset", "huge"]])
def test_pack_sweep_refuses_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pack", "--device", "cpu", *bad])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
