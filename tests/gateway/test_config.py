"""Configuration: defaults, TOML, environment overrides, secret files, and errors that name the key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.runtime.config import Config, load_config


def write(tmp_path: Path, text: str, name: str = "hushlink.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(path, env or {})
    return err.value


def test_defaults_load_without_a_file():
    config = load_config(None, {})
    assert config == Config()
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.server.public_url == "http://127.0.0.1:8080" and not config.server.is_https
    assert config.database.uri == "" and config.database.name == "hushlink"
    assert config.keys.keyring_file == ""
    assert config.twilio.sandbox and config.twilio.api_base == ""
    assert config.server.trusted_proxies == ()


def test_toml_values_are_read_and_typed(tmp_path):
    path = write(tmp_path, """
[server]
public_url = "https://msg.example.org"
host = "0.0.0.0"
port = 8443
data_dir = "/var/lib/hushlink"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]

[database]
uri = "mongodb://db.internal:27017/?replicaSet=rs0&tls=true"
name = "clinic"
timeout_seconds = 2

[keys]
keyring_file = "/etc/hushlink/keyring.json"

[twilio]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "tok"
api_base = "http://127.0.0.1:9999"

[inbound_smtp]
host = "0.0.0.0"
port = 2526
""")
    c = load_config(path, {})
    assert c.server.public_url == "https://msg.example.org" and c.server.is_https
    assert c.server.host == "0.0.0.0" and c.server.port == 8443
    assert c.server.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert c.data_dir == Path("/var/lib/hushlink")
    assert c.database.uri.startswith("mongodb://db.internal") and c.database.name == "clinic"
    assert c.database.timeout_seconds == 2.0 and isinstance(c.database.timeout_seconds, float)
    assert c.keys.keyring_file == "/etc/hushlink/keyring.json"
    assert not c.twilio.sandbox and c.twilio.auth_token == "tok"
    assert c.twilio.api_base == "http://127.0.0.1:9999"
    assert c.inbound_smtp.port == 2526
    assert "tok" not in repr(c)  # secrets stay out of reprs (and so out of logs)


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "[server]\nport = 8081\nhost = \"10.1.1.1\"\n")
    env = {
        "HUSHLINK_SERVER__PORT": "9000",
        "HUSHLINK_SERVER__TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
        "HUSHLINK_INBOUND_SMTP__ENABLED": "false",
        "HUSHLINK_DATABASE__NAME": "fromenv",
        "HUSHLINK_TEST_MONGODB_URI": "mongodb://ignored",  # not a SECTION__KEY name: not ours
        "PATH": "/usr/bin",
    }
    c = load_config(path, env)
    assert c.server.port == 9000
    assert c.server.host == "10.1.1.1"  # file value kept where env says nothing
    assert c.server.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert c.inbound_smtp.enabled is False
    assert c.database.name == "fromenv"
    assert load_config(None, {"HUSHLINK_SERVER__PORT": "9000"}).server.port == 9000


def test_secrets_can_come_from_files(tmp_path):
    secret = tmp_path / "twilio_token"
    secret.write_text("s3cr3t-token\n")
    path = write(tmp_path, f'[twilio]\naccount_sid = "AC{"0" * 32}"\nauth_token_file = "{secret}"\n')
    assert load_config(path, {}).twilio.auth_token == "s3cr3t-token"
    env = {"HUSHLINK_SMTP__PASSWORD_FILE": str(secret)}
    assert load_config(None, env).smtp.password == "s3cr3t-token"
    missing = write(tmp_path, f'[twilio]\nauth_token_file = "{tmp_path / "nope"}"\n', "missing.toml")
    err = config_error(missing)
    assert err.key == "twilio.auth_token_file"
    assert "cannot read" in str(err)


@pytest.mark.parametrize("text,key", [
    ("[server]\nbogus = 1\n", "server.bogus"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("[twilio]\nfoo_file = \"x\"\n", "twilio.foo_file"),
    ("[database]\nURI = \"mongodb://x\"\n", "database.URI"),  # TOML keys are case-sensitive
    ("[twilio]\naccount_sid_file = 1\n", "twilio.account_sid_file"),  # no such secret file
])
def test_unknown_keys_and_sections_are_named(tmp_path, text, key):
    err = config_error(write(tmp_path, text))
    assert err.key == key
    assert key in str(err)


def test_unknown_environment_section_is_named():
    err = config_error(None, {"HUSHLINK_BOGUS__PORT": "1"})
    assert "HUSHLINK_BOGUS__PORT" in str(err)
    err = config_error(None, {"HUSHLINK_SERVER__BOGUS": "1"})
    assert err.key == "server.bogus"


@pytest.mark.parametrize("text,key", [
    ("[server]\nport = \"eighty\"\n", "server.port"),
    ("[server]\nport = 70000\n", "server.port"),
    ("[server]\nport = -1\n", "server.port"),
    ("[server]\nport = 80.5\n", "server.port"),
    ("[server]\nport = true\n", "server.port"),
    ("[server]\npublic_url = \"ftp://x\"\n", "server.public_url"),
    ("[server]\npublic_url = \"https://x.example/app\"\n", "server.public_url"),
    ("[server]\nhost = 127\n", "server.host"),
    ("[server]\ntrusted_proxies = [1, 2]\n", "server.trusted_proxies"),
    ("[server]\nlog_level = \"LOUD\"\n", "server.log_level"),
    ("[database]\nuri = \"postgres://x\"\n", "database.uri"),
    ("[database]\nuri = \"mongodb://db.internal.example:27017/\"\n", "database.uri"),
    ("[database]\nuri = \"mongodb://127.0.0.1,db2.example/?replicaSet=rs0\"\n", "database.uri"),
    ("[database]\nuri = \"mongodb+srv://cluster.example.net/?tls=false\"\n", "database.uri"),
    ("[database]\nname = \"a.b\"\n", "database.name"),
    ("[twilio]\naccount_sid = \"XX123\"\nauth_token = \"t\"\n", "twilio.account_sid"),
    ("[twilio]\naccount_sid = \"AC123\"\n", "twilio.auth_token"),
    ("[inbound_smtp]\nenabled = \"maybe\"\n", "inbound_smtp.enabled"),
    ("[inbound_smtp]\nport = 99999\n", "inbound_smtp.port"),
    ("[outbox]\nmax_attempts = 0\n", "outbox.max_attempts"),
    ("[smtp]\nreturn_path = \"bounces\"\n", "smtp.return_path"),
    ("server = 1\n", "server"),
])
def test_bad_values_are_named(tmp_path, text, key):
    err = config_error(write(tmp_path, text))
    assert err.key == key
    assert key in str(err)


@pytest.mark.parametrize("uri", [
    "mongodb://127.0.0.1:27017/?directConnection=true", "mongodb://localhost/", "mongodb://[::1]:27017/",
    "mongodb://db.internal.example:27017/?tls=true", "mongodb://a.example,b.example/?replicaSet=rs0&ssl=true",
    "mongodb+srv://cluster.example.net/",
])
def test_a_database_on_this_machine_or_over_tls_is_accepted(uri):
    assert load_config(None, {"HUSHLINK_DATABASE__URI": uri}).database.uri == uri


def test_bad_environment_value_is_named():
    err = config_error(None, {"HUSHLINK_SERVER__PORT": "nine thousand"})
    assert err.key == "server.port" and "server.port" in str(err)


def test_unreadable_or_invalid_file_is_an_error(tmp_path):
    assert config_error(tmp_path / "absent.toml").key == "--config"
    assert config_error(write(tmp_path, "[server\nport = 1\n")).key == "--config"


def test_example_config_loads_to_the_defaults():
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    assert load_config(example, {}) == Config()


# -- the command line ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hushlink_command() -> list[str]:
    script = Path(sys.executable).parent / "hushlink"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.runtime.cli"]


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUSHLINK_")}
    return subprocess.run([*hushlink_command(), *args], cwd=tmp_path, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_with_bad_config_exits_2_naming_the_key_before_binding(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    bad = write(tmp_path, f'[server]\nport = {port}\ndata_dir = "{data_dir}"\n'
                          '[database]\nname = "bad.name"\n', "bad.toml")
    result = run_cli(tmp_path, "serve", "--config", str(bad))
    assert result.returncode == 2, result.stderr
    assert "database.name" in result.stderr
    assert "Traceback" not in result.stderr
    assert "running" not in result.stdout
    # Nothing started: no data directory, no keyring, and the port is still free.
    assert not data_dir.exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))

    bad_port = write(tmp_path, f'[server]\nport = "http"\ndata_dir = "{data_dir}"\n', "port.toml")
    result = run_cli(tmp_path, "--config", str(bad_port), "serve")
    assert result.returncode == 2 and "server.port" in result.stderr
    assert not data_dir.exists()

    result = run_cli(tmp_path, "serve", env={"HUSHLINK_SERVER__PORT": "99999",
                                             "HUSHLINK_SERVER__DATA_DIR": str(data_dir)})
    assert result.returncode == 2 and "server.port" in result.stderr
    assert not data_dir.exists()


def test_a_remote_smtp_relay_without_starttls_is_refused_naming_the_key():
    from gateway.errors import ConfigError
    from gateway.runtime.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, {"HUSHLINK_SMTP__HOST": "smtp.example.org", "HUSHLINK_SMTP__STARTTLS": "false"})
    assert err.value.key == "smtp.starttls"
    # A relay on this machine (e.g. a local MTA) may be plain.
    assert load_config(None, {"HUSHLINK_SMTP__HOST": "127.0.0.1", "HUSHLINK_SMTP__STARTTLS": "false"}).smtp.host


def test_dkim_settings_go_together():
    from gateway.errors import ConfigError
    from gateway.runtime.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, {"HUSHLINK_SMTP__DKIM_SELECTOR": "s1"})
    assert err.value.key == "smtp.dkim_private_key"


def test_the_common_password_list_ships_with_the_package():
    from gateway.tenancy.staff import common_passwords

    assert len(common_passwords()) >= 50 and "password1234" in common_passwords()
