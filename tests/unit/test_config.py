"""Config loading: defaults, every key type-checked by name, env overrides, cross checks."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from pool import config as cfg
from pool.config import Config, ConfigError, load


def leaf_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, type]]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, key + ".")  # type: ignore[arg-type]
        elif typing.get_origin(tp) is not tuple:
            keys.append((key, tp))
    return keys


def toml_for(key: str, value: str) -> str:
    *tables, name = key.split(".")
    return (f"[{'.'.join(tables)}]\n" if tables else "") + f"{name} = {value}\n"


def test_default_config_loads_and_matches_the_dataclass_defaults() -> None:
    loaded = load(cfg.DEFAULT_CONFIG, env={})
    assert dataclasses.replace(loaded, source="<defaults>") == Config()


@pytest.mark.parametrize(("key", "tp"), leaf_keys())
def test_every_key_rejects_a_wrong_type_by_name(key: str, tp: type, tmp_path: Path) -> None:
    wrong = '"text"' if tp is not str else "12"
    path = tmp_path / "c.toml"
    path.write_text(toml_for(key, wrong))
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert key in str(info.value) and str(path) in str(info.value)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[stratum]\nhots = '0.0.0.0'\n")
    with pytest.raises(ConfigError, match=r"unknown key stratum\.hots"):
        load(path, env={})
    path.write_text("[nonsense]\n")
    with pytest.raises(ConfigError, match="unknown key nonsense"):
        load(path, env={})
    path.write_text("[[stratum.ports]]\nport = 1\nstart_dificulty = 1\n")
    with pytest.raises(ConfigError, match=r"stratum\.ports\[0\]\.start_dificulty"):
        load(path, env={})


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[stratum]\nhost = '127.0.0.1'\n")
    loaded = load(
        path,
        env={
            "POOL_STRATUM_HOST": "0.0.0.0",
            "POOL_LIMITS_MAX_LINE_BYTES": "4096",
            "POOL_NODE_LONGPOLL": "false",
        },
    )
    assert loaded.stratum.host == "0.0.0.0"
    assert loaded.limits.max_line_bytes == 4096
    assert loaded.node.longpoll is False
    with pytest.raises(
        ConfigError, match=r"environment overrides of limits\.max_line_bytes\): limits"
    ):
        load(path, env={"POOL_LIMITS_MAX_LINE_BYTES": "lots"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nmode = 'cloud'\n", "node.mode"),
        ("[pool]\nextranonce2_size = 1\n", "pool.extranonce2_size"),
        ("[limits]\nmax_line_bytes = 100\n", "limits.max_line_bytes"),
        ("[limits]\nmax_connections_per_ip = 0\n", "limits.max_connections_per_ip"),
        (
            "[[stratum.ports]]\nport = 1\nstart_difficulty = 0.1\nmin_difficulty = 1.0\n",
            "stratum.ports[0]",
        ),
        ("[stratum]\nversion_rolling_mask = 'xyz'\n", "stratum.version_rolling_mask"),
        ("[node]\ntemplate_refresh_seconds = 150\n", "node.template_refresh_seconds"),
        ("[stratum]\nports = []\n", "stratum.ports"),
        ("[ledger]\njournal_retention_days = -1.0\n", "ledger.journal_retention_days"),
        ("[ledger]\njournal_retention_days = nan\n", "ledger.journal_retention_days"),
        ("[ledger]\nstorage_retry_seconds = 0.0\n", "ledger.storage_retry_seconds"),
        ("[ledger]\nstorage_retry_seconds = inf\n", "ledger.storage_retry_seconds"),
        (
            "[ledger]\nstorage_retry_seconds = 5.0\nstorage_retry_max_seconds = 1.0\n",
            "ledger.storage_retry_max_seconds",
        ),
        ("[ledger]\nreconcile_blocks = 0\n", "ledger.reconcile_blocks"),
        ("[ledger]\npplns_window_factor = 0.0\n", "ledger.pplns_window_factor"),
        ("[ledger]\npplns_window_factor = nan\n", "ledger.pplns_window_factor"),
        ("[ledger]\npplns_max_log_shares = 10\n", "ledger.pplns_max_log_shares"),
        ("[ledger]\nsqlite_busy_timeout_seconds = 0\n", "ledger.sqlite_busy_timeout_seconds"),
        ("[ledger]\nsqlite_busy_timeout_seconds = 301\n", "ledger.sqlite_busy_timeout_seconds"),
        ("[ledger]\nscheme = 'solo'\n", "ledger.scheme"),  # solo is per port only
        ("[[stratum.ports]]\nport = 4000\nscheme = 'prop'\n", "stratum.ports[0].scheme"),
        ("[ledger]\nreconcile_blocks = 100001\n", "ledger.reconcile_blocks"),
        ("[chain.simulation]\ninitial_difficulty = 1e-12\n", "chain.simulation.initial_difficulty"),
        (
            "[chain.simulation]\nshared_write_attempts = 0\n",
            "chain.simulation.shared_write_attempts",
        ),
        (
            "[chain.simulation]\nshared_max_pending_blocks = 0\n",
            "chain.simulation.shared_max_pending_blocks",
        ),
        (
            "[chain.simulation]\nretarget_interval = 1\ntarget_spacing_seconds = 0.0001\n",
            "chain.simulation.target_spacing_seconds",
        ),
        ("[api]\nport = 3333\n", "api.port"),
        ("[api]\nport = 70000\n", "api.port"),
        ("[stratum]\nhost = '0.0.0.0'\n[api]\nport = 3333\n", "api.port"),
        (
            "[[stratum.ports]]\nport = 4000\n[[stratum.ports]]\nport = 4000\n",
            "stratum.ports[1].port",
        ),
        ("[api]\nallowed_hosts = ['ok', 'a b']\n", "api.allowed_hosts[1]"),
        ("[api]\nallowed_hosts = ['']\n", "api.allowed_hosts[0]"),
        ("[api]\nmax_request_line_bytes = 100\n", "api.max_request_line_bytes"),
        ("[api]\nmax_header_bytes = 0\n", "api.max_header_bytes"),
        ("[api]\nmax_headers = 2\n", "api.max_headers"),
        ("[api]\nmax_body_bytes = 10\n", "api.max_body_bytes"),
        ("[api]\nmax_message_chars = 0\n", "api.max_message_chars"),
        ("[api]\nmax_message_chars = 5000\n", "api.max_message_chars"),
    ],
)
def test_cross_checks_name_the_key(text: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert key in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, env={})


@pytest.mark.parametrize(
    "path", sorted(cfg.DEFAULT_CONFIG.parent.glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path: Path) -> None:
    loaded = load(path, env={})
    assert loaded.source == str(path)


def test_effective_config_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[node]\nmode = "external"\nrpc_url = "http://u:hunter2@127.0.0.1:8332/"\n')
    config = cfg.load(path, env={})
    data = cfg.effective(config, env={"POOL_RPC_PASSWORD": "topsecret"})
    text = repr(data)
    assert "hunter2" not in text and "topsecret" not in text
    assert data["node"]["rpc_url"] == "http://u:***@127.0.0.1:8332/"
    assert data["secrets"]["node.rpc_password_env"] == {
        "variable": "POOL_RPC_PASSWORD",
        "set": True,
    }
    assert data["secrets"]["api.admin_token_env"]["set"] is False
    assert cfg.effective(cfg.load(None, env={}), env={})["node"]["rpc_url"].startswith("http://127")


def test_regtest_minimum_difficulty_is_the_simulations_own() -> None:
    from pool.chain_sim import MIN_DIFFICULTY

    assert cfg.SIM_MIN_DIFFICULTY == MIN_DIFFICULTY
    assert 4.65e-10 < cfg.SIM_MIN_DIFFICULTY < 4.66e-10
    ok = dataclasses.replace(
        Config(),
        chain=cfg.ChainConfig(simulation=cfg.SimulationConfig(initial_difficulty=MIN_DIFFICULTY)),
    )
    cfg.validate(ok, "x")  # the minimum itself is accepted
    below = dataclasses.replace(
        ok,
        chain=cfg.ChainConfig(
            simulation=cfg.SimulationConfig(initial_difficulty=MIN_DIFFICULTY * 0.999)
        ),
    )
    with pytest.raises(ConfigError, match=r"initial_difficulty must be at least 4\.65654e-10"):
        cfg.validate(below, "x")


def test_api_port_may_equal_a_stratum_port_on_another_address() -> None:
    config = dataclasses.replace(
        Config(),
        stratum=cfg.StratumConfig(host="127.0.0.1"),
        api=cfg.ApiConfig(host="127.0.0.2", port=3333),
    )
    cfg.validate(config, "x")
    off = dataclasses.replace(Config(), api=cfg.ApiConfig(enabled=False, port=3333))
    cfg.validate(off, "x")  # no API listener, no clash


def test_config_path_that_is_a_directory_or_unreadable_or_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a config file") as info:
        load(tmp_path, env={})
    assert str(tmp_path) in str(info.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not a text file"):
        load(binary, env={})
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nowhere" / "x.toml")
    with pytest.raises(ConfigError, match="no such config file"):
        load(dangling, env={})
    looped = tmp_path / "loop.toml"
    looped.symlink_to(looped)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(looped, env={})


def test_port_schemes_and_pplns_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[ledger]\nscheme = 'pplns'\npplns_window_factor = 4.0\n"
        "[[stratum.ports]]\nport = 4000\n"
        "[[stratum.ports]]\nport = 4001\nscheme = 'solo'\n"
        "[[stratum.ports]]\nport = 4002\nscheme = 'fpps'\n"
    )
    loaded = load(path, env={})
    assert [p.scheme for p in loaded.stratum.ports] == ["", "solo", "fpps"]
    assert loaded.ledger.scheme == "pplns" and loaded.ledger.pplns_window_factor == 4.0
    summary = cfg.limits_summary(loaded)
    assert summary["ledger.pplns_window_factor"] == 4.0
    assert summary["ledger.pplns_max_log_shares"] == 2_000_000
    assert summary["ledger.sqlite_busy_timeout_seconds"] == 5.0
