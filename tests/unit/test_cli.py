import subprocess
import sys
from pathlib import Path

import yaml

from clmr_ray.cli import main

VENV_BIN = Path(sys.executable).parent


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("prepare", "demo", "spec", "bench"):
        assert command in out


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
    assert err == "clmr-ray: error: unknown key 'pretrain.temprature' (did you mean 'temperature'?)"


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
