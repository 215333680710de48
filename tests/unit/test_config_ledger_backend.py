"""[ledger] backend = "postgresql": its DSN (never with a password), the password's variable,
the multi-writer timings and pool.instance_id are validated with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pool.config import ConfigError, effective, limits_summary, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(text)
    return path


def test_postgresql_backend_loads(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[ledger]\nbackend = "postgresql"\ndsn = "postgresql://pool@127.0.0.1:5432/pool"\n'
            "[pool]\ninstance_id = 2\n",
        ),
        env={},
    )
    assert config.ledger.backend == "postgresql" and config.pool.instance_id == 2
    assert config.ledger.password_env == "POOL_PG_PASSWORD"
    assert limits_summary(config)["ledger.shared_refresh_seconds"] == 2.0
    secrets = effective(config, env={"POOL_PG_PASSWORD": "s3cret"})["secrets"]
    assert secrets["ledger.password_env"] == {"variable": "POOL_PG_PASSWORD", "set": True}
    assert "s3cret" not in repr(effective(config, env={"POOL_PG_PASSWORD": "s3cret"}))


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('backend = "mysql"', "ledger.backend", "must be one of sqlite, postgresql"),
        ('backend = "postgresql"', "ledger.dsn", "must be set"),
        (
            'backend = "postgresql"\ndsn = "postgresql://pool:hunter2@db/pool"',
            "ledger.dsn",
            "must not contain a password",
        ),
        (
            'backend = "postgresql"\ndsn = "host=db password=hunter2"',
            "ledger.dsn",
            "must not contain a password",
        ),
        ('backend = "postgresql"\ndsn = "nonsense"', "ledger.dsn", "not a libpq"),
        ('dsn = "postgresql://pool@db/pool"', "ledger.dsn", "only used with"),
        ('password_env = "NOT A NAME"', "ledger.password_env", "environment variable"),
        ("shared_refresh_seconds = 0", "ledger.shared_refresh_seconds", "0.1..3600"),
        ("heartbeat_seconds = 0.1", "ledger.heartbeat_seconds", "0.5..3600"),
        ("payout_lock_retry_seconds = 1e9", "ledger.payout_lock_retry_seconds", "0.1..3600"),
    ],
)
def test_bad_ledger_backend_keys_are_named(tmp_path: Path, text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"[ledger]\n{text}\n"), env={})
    assert key in str(info.value) and why in str(info.value)
    assert "hunter2" not in str(info.value)


def test_instance_id_range(tmp_path: Path) -> None:
    # the first byte of the extranonce1 prefix (pool/server_config.py)
    with pytest.raises(ConfigError, match=r"pool\.instance_id must be 0\.\.255"):
        load(write(tmp_path, "[pool]\ninstance_id = 256\n"), env={})
