"""Every W&B sweep file names keys the CLI accepts, for every value it can take (a typo fails here)."""

import itertools
from pathlib import Path

import pytest
import yaml

from cli import LitCLI

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def sample_values(spec: dict) -> list:
    if "values" in spec:
        return spec["values"]
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def cli_args(sweep: dict) -> list[str]:
    """The fixed part of the sweep's command, as the agent runs it (without interpreter and program)."""
    command = [c for c in sweep["command"] if c not in ("${env}", "${args}", "python", "${program}")]
    return [str(ROOT / c) if c.endswith(".yaml") else c for c in command]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_parameters_parse_through_the_cli(path, capsys):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "cli.py" and "${args}" in sweep["command"]
    base = cli_args(sweep)
    assert base[0] == "fit"
    params = sweep["parameters"]
    # one parse per value of each parameter, the others at their first value
    first = {k: sample_values(v)[0] for k, v in params.items()}
    combos = [dict(first, **{k: v}) for k, spec in params.items() for v in sample_values(spec)]
    for combo in itertools.islice(combos, 12):
        args = [*base, *[f"--{k}={v}" for k, v in combo.items()], "--print_config"]
        with pytest.raises(SystemExit) as exc:
            LitCLI(args=args)
        assert exc.value.code in (None, 0), capsys.readouterr().err[-2000:]
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in combo.items():
            node = printed
            for part in key.split("."):
                node = node[part]
            expected = yaml.safe_load(value) if isinstance(value, str) else value
            assert node == expected, (key, node, expected)


def test_a_typo_in_a_sweep_key_fails(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        LitCLI(
            args=[
                "fit",
                "-c",
                str(ROOT / "configs" / "swad" / "pacs.yaml"),
                "--model.init_args.lrr=0.1",
                "--print_config",
            ]
        )
    assert exc.value.code not in (None, 0)
