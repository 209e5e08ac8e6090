"""W&B logger preset: offline unless the user has credentials; WANDB_MODE wins."""

import pytest

from loggers import WandbLogger, wandb_has_credentials


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_offline_without_credentials(no_credentials, tmp_path):
    assert not wandb_has_credentials()
    assert WandbLogger(save_dir=str(tmp_path))._offline


def test_online_with_netrc_login(no_credentials, tmp_path):
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    no_credentials.chmod(0o600)
    assert wandb_has_credentials()
    assert not WandbLogger(save_dir=str(tmp_path))._offline


def test_wandb_mode_overrides(no_credentials, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbLogger(save_dir=str(tmp_path))._offline
