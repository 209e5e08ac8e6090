"""Every W&B sweep file names keys the CLI accepts, for every value it can take, and each lands where intended.

A sweep's `command` is parsed as the agent runs it (`cli.py fit <fixed args> --key=value ...`, with `${args}` at
its place). The printed config must equal the config without the sweep's arguments with exactly the swept keys
changed: so a typo fails (the parser rejects the key), and a key that lands on the wrong object fails (the
config differs elsewhere). Callback keys `trainer.callbacks.init_args.<name>` go to the LAST callback of the
list (jsonargparse's rule for a list of classes), which must be the one the command appends
(`--trainer.callbacks+=<class>` or a `-c` file with `trainer.callbacks+:`), or, without an append, a litlab
callback the method's config keeps last, and the only one of its class; the
callbacks are also instantiated, so a value the class rejects (e.g. an unknown `normalize`) fails too.
"""

import copy
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import instantiate_class

from cli import LitCLI

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
CALLBACK_KEY = "trainer.callbacks.init_args."


def sample_values(spec: dict) -> list:
    if "values" in spec:
        return spec["values"]
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def split_command(sweep: dict) -> tuple[list[str], list[str]]:
    """The command's arguments before and after `${args}` (without env, interpreter and program)."""
    command = [c for c in sweep["command"] if c not in ("${env}", "python", "${program}")]
    command = [str(ROOT / c) if c.endswith(".yaml") else c for c in command]
    i = command.index("${args}")
    return command[:i], command[i + 1 :]


def appended_callback(args: list[str]) -> str | None:
    """Class path of the last callback the command appends (`--trainer.callbacks+=X` or a `-c` file's `callbacks+`)."""
    last = None
    for i, arg in enumerate(args):
        if arg.startswith("--trainer.callbacks+="):
            last = arg.split("=", 1)[1]
        elif arg in ("-c", "--config"):
            added = (yaml.safe_load(Path(args[i + 1]).read_text()).get("trainer") or {}).get("callbacks+")
            if added:
                last = added[-1]["class_path"] if isinstance(added, list) else added["class_path"]
    return last


def printed_config(args: list[str], capsys) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        LitCLI(args=[*args, "--print_config"])
    captured = capsys.readouterr()
    assert exc.value.code in (None, 0), captured.err[-2000:]
    return yaml.safe_load(captured.out)


def set_key(config: dict, key: str, value) -> None:
    """Put `value` where the CLI key `key` should land (callback keys: the last callback)."""
    if key.startswith(CALLBACK_KEY):
        config["trainer"]["callbacks"][-1].setdefault("init_args", {})[key[len(CALLBACK_KEY) :]] = value
        return
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    assert leaf in node, f"{key}: no such key in the parsed config"
    node[leaf] = value


def combos(params: dict) -> list[dict]:
    """Few parses that still give every value of every parameter once: the i-th value of each (cycled)."""
    values = {k: sample_values(v) for k, v in params.items()}
    n = max(len(v) for v in values.values())
    return [{k: v[i % len(v)] for k, v in values.items()} for i in range(n)]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_parameters_parse_through_the_cli(path, capsys):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "cli.py" and "${args}" in sweep["command"]
    before, after = split_command(sweep)
    assert before[0] == "fit"
    params = sweep["parameters"]
    target = appended_callback(before)
    base = printed_config([*before, *after], capsys)
    if any(k.startswith(CALLBACK_KEY) for k in params) and not target:
        # no append: the method's config keeps the tuned callback last (e.g. configs/prs/*.yaml); the keys are
        # checked to land on it, and instantiating it with the values checks they are its arguments
        target = base["trainer"]["callbacks"][-1]["class_path"]
        assert target.startswith("callbacks."), f"callback keys would land on {target}, not a litlab callback"
    for combo in combos(params):
        args = [*before, *[f"--{k}={v}" for k, v in combo.items()], *after]
        printed = printed_config(args, capsys)
        expected = copy.deepcopy(base)
        for key, value in combo.items():
            set_key(expected, key, yaml.safe_load(value) if isinstance(value, str) else value)
        assert printed == expected, combo
        callbacks = printed["trainer"]["callbacks"]
        if target:
            assert callbacks[-1]["class_path"] == target
            assert [c["class_path"] for c in callbacks].count(target) == 1, "the base config has one already"
        for cb in callbacks:  # the classes accept the values (choices are checked at construction)
            instantiate_class((), Namespace(class_path=cb["class_path"], init_args=cb.get("init_args", {})))


def test_callback_keys_go_to_the_last_callback(capsys):
    """The rule the sweeps rely on: a callback key after an append sets the appended callback, nothing else."""
    base = [
        "fit",
        "-c",
        str(ROOT / "configs" / "scorecl" / "simclr_cifar10.yaml"),
        "-c",
        str(ROOT / "configs" / "callbacks" / "scorecl.yaml"),
    ]
    printed = printed_config([*base, "--trainer.callbacks.init_args.temperature=0.5"], capsys)
    callbacks = printed["trainer"]["callbacks"]
    assert callbacks[-1]["class_path"] == "callbacks.scorecl.ScoreWeighting"
    assert callbacks[-1]["init_args"]["temperature"] == 0.5
    # OnlineKNN has a `temperature` too: untouched
    assert [c["init_args"]["temperature"] for c in callbacks[:2]] == [0.07, 0.1]


@pytest.mark.parametrize(
    "key",
    [
        "--model.init_args.lrr=0.1",
        "--trainer.callbacks.init_args.sigma_starr=0.1",
        "--trainer.callbacks.0.init_args.blend=0.5",
    ],
)
def test_a_typo_in_a_sweep_key_fails(key):
    with pytest.raises(SystemExit) as exc:
        LitCLI(
            args=[
                "fit",
                "-c",
                str(ROOT / "configs" / "scorecl" / "simclr_cifar10.yaml"),
                "-c",
                str(ROOT / "configs" / "callbacks" / "scorecl.yaml"),
                key,
                "--print_config",
            ]
        )
    assert exc.value.code not in (None, 0)
