import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clmr_ray import cli, machine
from clmr_ray.cli import main

VENV_BIN = Path(sys.executable).parent


def refused(capsys, argv: list[str]) -> str:
    """main(argv) stops in argument parsing: exit 2, a usage line and one error line (returned), no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: ") and "Traceback" not in "\n".join(err)
    assert [line for line in err if "error:" in line] == [err[-1]]
    return err[-1]


def helped(capsys, monkeypatch, argv: list[str]) -> str:
    """The --help text of argv, unwrapped (a wide terminal), whitespace collapsed."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture
def nothing_runs(monkeypatch):
    """Every command, and every benchmark's measuring, fails the test if it starts: a bad argument must stop
    the parsing before any of them (so before Ray, data or training)."""
    from clmr_ray.bench import augment, epoch, scaling, step

    def ran(*_args, **_kwargs):
        raise AssertionError("a command ran despite a bad argument")

    for name in dir(cli):
        if name.startswith("cmd_") and name != "cmd_bench":
            monkeypatch.setattr(cli, name, ran)
    for module, name in ((augment, "run"), (step, "run"), (epoch, "measure_epoch"), (scaling, "pack_sweep"),
                         (scaling, "train_scaling"), (scaling, "sweep_overhead")):
        monkeypatch.setattr(module, name, ran)


def test_help_lists_the_commands(capsys, monkeypatch):
    out = helped(capsys, monkeypatch, ["--help"])
    for command in ("prepare", "demo", "spec", "bench"):
        assert command in out


def test_no_command_is_a_usage_error(capsys):
    assert refused(capsys, []) == "clmr-ray: error: the following arguments are required: COMMAND"


DEVICE_COMMANDS = [["run", "--preset", "tiny"], ["bench", "augment"], ["bench", "step"], ["bench", "epoch"],
                   ["bench", "scaling", "pack"]]


def _prog(argv: list[str]) -> str:
    return "clmr-ray " + " ".join(a for a in argv if not a.startswith("-") and a != "tiny")


@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=" ".join)
def test_unknown_device_is_one_line_error_naming_it(argv, capsys, nothing_runs):
    line = refused(capsys, [*argv, "--device", "gpu"])
    assert line == f"{_prog(argv)}: error: argument --device: gpu: not a device (expected cpu, cuda or cuda:N)"
    assert "mps: not a device this project runs on" in refused(capsys, [*argv, "--device", "mps"])


@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=" ".join)
def test_cuda_without_a_cuda_device_is_one_line_error(argv, capsys, monkeypatch, nothing_runs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        line = refused(capsys, [*argv, "--device", device])
        assert line == (f"{_prog(argv)}: error: argument --device: {device}: "
                        "no CUDA device is available on this machine")


def test_cuda_index_past_the_last_card_is_refused(capsys, monkeypatch, nothing_runs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert machine.device_arg("cuda:1") == "cuda:1" and machine.device_arg("cuda") == "cuda"
    assert refused(capsys, ["run", "--device", "cuda:2"]).endswith(
        "argument --device: cuda:2: this machine has 2 CUDA devices: cuda:0 to cuda:1")


def test_run_passes_a_usable_device_on(monkeypatch):
    seen = []

    def cmd_run(args):
        seen.append(args.device)
        return 0

    monkeypatch.setattr(cli, "cmd_run", cmd_run)
    assert main(["run", "--device", "cpu"]) == 0 and seen == ["cpu"]


@pytest.mark.parametrize("command", [["ablate", "table.yaml"], ["reproduce"], ["sweep", "sweep.yaml"]],
                         ids=lambda c: c[0])
def test_counts_are_positive_integers_in_the_argument_parsing(command, capsys, nothing_runs):
    flags = ["--num-cpus", "--max-concurrent"] + (["--num-samples"] if command[0] == "sweep" else [])
    for flag in flags:
        for value, shown in (("-1", "-1"), ("0", "0"), ("-2", "-2"), ("two", "'two'")):
            line = refused(capsys, [*command, flag, value])
            assert line == f"clmr-ray {command[0]}: error: argument {flag}: expected an integer >= 1, got {shown}"


TABLE1 = str(cli.ABLATIONS_DIR / "table1.yaml")


def test_seeds_are_distinct_non_negative_integers(capsys, nothing_runs):
    for command in (["ablate", TABLE1], ["reproduce"]):
        line = refused(capsys, [*command, "--seeds", "0", "1", "0"])
        assert line == f"clmr-ray {command[0]}: error: argument --seeds: seed 0 is given more than once"
        for bad in ("-1", "1.5"):
            line = refused(capsys, [*command, "--seeds", "2", bad])
            assert line == f"clmr-ray {command[0]}: error: argument --seeds: seed {bad}: expected an integer >= 0"


def test_distinct_seeds_reach_the_ablation_in_order():
    assert cli.build_parser().parse_args(["ablate", TABLE1, "--seeds", "2", "0", "1"]).seeds == [2, 0, 1]


def test_prepare_sample_rate_must_be_positive(capsys, nothing_runs):
    for rate in ("0", "-8000"):
        line = refused(capsys, ["prepare", "synthetic", "--preset", "tiny", "--sample-rate", rate])
        assert line == f"clmr-ray prepare: error: argument --sample-rate: expected an integer >= 1, got {rate}"


def test_prepare_sample_rate_reaches_the_spec(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "prepare_data", lambda data, *_a, **_k: seen.append(data.sample_rate))
    assert main(["prepare", "synthetic", "--preset", "tiny", "--sample-rate", "16000"]) == 0
    assert seen == [16000]


def test_bench_without_a_benchmark_lists_the_benchmarks(capsys):
    assert refused(capsys, ["bench"]) == ("clmr-ray bench: error: the following arguments are required: "
                                          "{augment,step,epoch,scaling}")
    assert refused(capsys, ["bench", "scaling"]) == ("clmr-ray bench scaling: error: the following arguments are "
                                                     "required: {train,sweep,pack}")


def test_bench_help_texts(capsys, monkeypatch):
    out = helped(capsys, monkeypatch, ["bench", "scaling", "--help"])
    assert out.startswith("usage: clmr-ray bench scaling ") and "python -m" not in out
    out = helped(capsys, monkeypatch, ["bench", "augment", "--help"])
    assert out.startswith("usage: clmr-ray bench augment ")
    assert ("one crop at a time (as a per-sample DataLoader transform does), same ops, same device." in out
            and "(which filter method is faster depends on which)." in out)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    for shown in ("(default: paper)", "(default: 32)", f"else cpu: {default_device} here)", "(default: 3)",
                  "(default: 8)"):
        assert shown in out
    for benchmark in ("step", "epoch"):
        out = helped(capsys, monkeypatch, ["bench", benchmark, "-h"])
        assert out.startswith(f"usage: clmr-ray bench {benchmark} ") and f"else cpu: {default_device} here)" in out
    out = helped(capsys, monkeypatch, ["bench", "--help"])
    for benchmark in cli.BENCHES:
        assert benchmark in out


def test_demo_help_says_what_it_runs_how_long_and_where_results_go(capsys, monkeypatch):
    out = helped(capsys, monkeypatch, ["demo", "--help"])
    for said in ("clmr-ray reproduce --preset demo", "About 6 minutes on a 2-core CPU", "RESULTS/runs/*.parquet",
                 "(default: results/demo)"):
        assert said in out


def test_spec_prints_resolved_yaml_with_overrides(capsys):
    assert main(["spec", "--preset", "tiny", "--set", "pretrain.lr=0.01", "--set", "format=both"]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    assert spec["pretrain"]["lr"] == 0.01
    assert spec["format"] == "both"
    assert spec["data"]["sample_rate"] == 8000


def test_config_typo_is_one_line_error(capsys, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("pretrain:\n  temprature: 0.1\n")
    assert main(["spec", "--config", str(exp)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"clmr-ray: error: {exp}: unknown key 'pretrain.temprature' (did you mean 'temperature'?)"


def test_bad_set_syntax(capsys):
    assert main(["spec", "--set", "pretrain.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_console_script_is_installed():
    script = VENV_BIN / "clmr-ray"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "usage: clmr-ray" in result.stdout


def test_tables_without_records_is_one_line_for_folders_and_uris(capsys, tmp_path):
    for results in (str(tmp_path / "none"), (tmp_path / "none").as_uri()):
        assert main(["tables", results]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clmr-ray: error: ") and "no run records" in err and "\n" not in err
    assert main(["tables", "nosuchscheme://bucket/results"]) == 2
    assert "not a usable filesystem URI" in capsys.readouterr().err


def test_commands_turn_off_rays_log_deduplication_before_ray_is_imported():
    """Else parallel trials' per-epoch lines collapse into '[repeated 8x across cluster]'."""
    code = ("import os, sys; os.environ.pop('RAY_DEDUP_LOGS', None); from clmr_ray.cli import main; "
            "main(['spec', '--preset', 'tiny']); assert 'ray' not in sys.modules; "
            "import ray._private.ray_constants as c; print('dedup', c.RAY_DEDUP_LOGS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "dedup False"
