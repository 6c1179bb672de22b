"""Loading the stack configuration: defaults, TOML, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacklab import wire
from stacklab.config import ConfigError, RudpSettings, StackConfig, load_config
from stacklab.errors import UserError


def test_defaults_follow_the_wire_facts() -> None:
    config = load_config(None, {})
    assert (config.dhcp.host, config.dhcp.port) == (wire.DHCP_ADDR, wire.DHCP_PORT)
    assert (config.dns.host, config.dns.port) == (wire.DNS_ADDR, wire.DNS_PORT)
    assert (config.app_tcp.host, config.app_tcp.port) == (wire.APP_ADDR, wire.APP_TCP_PORT)
    assert (config.origin.host, config.origin.port) == (wire.ORIGIN_ADDR, wire.ORIGIN_PORT)
    assert config.app_rudp == RudpSettings(
        host="127.0.0.3", port=2122, chunk_size=500, max_window=5, initial_rto=1.0,
        min_rto=0.2, max_rto=10.0, max_timeouts=12, max_sessions=1024, idle_timeout=30.0,
    )  # fmt: skip
    assert config.dns_records() == {"my-app-server.local": "127.0.0.3"}
    assert config.fetch_policy().allow == ("127.0.0.1:8080",)


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(
        '[dns]\nport = 5454\nrecords = { "Web.Local" = "127.0.0.9" }\n'
        "[origin]\nport = 9090\n"
        "[app_rudp]\ninitial_rto = 2\n"
    )
    config = load_config(path, {"dns.port": 6000, "origin": {"host": None}, "app_tcp.port": None})
    assert config.dns.port == 6000  # override wins
    assert config.origin.port == 9090 and config.origin.host == wire.ORIGIN_ADDR
    assert config.app_rudp.initial_rto == 2.0 and isinstance(config.app_rudp.initial_rto, float)
    assert config.dns_records() == {"web.local": "127.0.0.9"}
    assert config.fetch_policy().allow == ("127.0.0.1:9090",)  # the allowlist follows the origin


def test_default_record_follows_the_app_server_address() -> None:
    config = load_config(None, {"app_tcp.host": "127.0.0.7"})
    assert config.dns_records() == {"my-app-server.local": "127.0.0.7"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[dsn]\nport = 1\n", "unknown config section [dsn]"),
        ("[dns]\nprot = 1\n", "unknown key dns.prot"),
        ('[dns]\nport = "53"\n', "dns.port must be an integer, not '53'"),
        ("[dns]\nport = true\n", "dns.port must be an integer"),
        ("[dns]\nport = 70000\n", "dns.port 70000 is not in 0..65535"),
        ('[dns]\nhost = "localhost"\n', "dns.host 'localhost' is not an IP address"),
        ('[dns]\nrecords = { a = "x" }\n', "dns.records.a 'x' is not an IPv4 address"),
        ("[app_rudp]\nmax_window = 0\n", "app_rudp.max_window must be positive"),
        ("[dns]\nttl = -1\n", "dns.ttl must not be negative"),
        ('[fetch]\nallow = ["127.1:80"]\n', "fetch.allow"),
        ("dns = 3\n", "config section [dns] must be a table"),
        ("[dns\n", "is not valid TOML"),
        ('[dhcp]\npool_start = "127.0.0.9"\npool_end = "127.0.0.2"\n', "pool_start is after"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert message in info.value.format_message()
    assert isinstance(info.value, UserError) and info.value.exit_code == 2


def test_a_dns_ttl_of_zero_is_accepted() -> None:
    assert load_config(None, {"dns.ttl": 0}).dns.ttl == 0


def test_missing_file_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/stack.toml", {})
    with pytest.raises(ConfigError, match=r"must name section\.key"):
        load_config(None, {"port": 1})
    with pytest.raises(ConfigError, match=r"dhcp\.lease_time must be a number"):
        load_config(None, {"dhcp.lease_time": "long"})


def test_stack_config_is_a_plain_dataclass() -> None:
    assert StackConfig().app_tcp.max_connections > 0
