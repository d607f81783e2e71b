"""Configuration: file < .env < environment, typed values, one clear error for a bad one."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ucloud_common.config import DEFAULT_CONFIG, ConfigError, Settings, load_settings
from dataclasses import fields


def test_defaults_file_documents_every_key():
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert set(data) == {f.name for f in fields(Settings)}
    assert load_settings(env={}, env_file="/nonexistent") == Settings()


def test_precedence_file_then_dotenv_then_environment(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("api_bind: '0.0.0.0:1'\napi_workers: 3\nlog_level: DEBUG\netcd_endpoints: ['a:1']\n")
    dotenv = tmp_path / ".env"
    dotenv.write_text("UCLOUD_API_WORKERS=5\nUCLOUD_LOG_LEVEL=WARNING\n")
    env = {"UCLOUD_LOG_LEVEL": "ERROR", "UCLOUD_ETCD_ENDPOINTS": "h1:2379, h2:2379,h3:2379"}
    s = load_settings(env=env, config_file=config, env_file=dotenv)
    assert s.api_bind == "0.0.0.0:1"  # file
    assert s.api_workers == 5  # .env beats file
    assert s.log_level == "ERROR"  # environment beats .env
    assert s.etcd_endpoints == ("h1:2379", "h2:2379", "h3:2379")
    assert load_settings(env={"UCLOUD_ENV_FILE": str(dotenv)}, config_file=config).api_workers == 5


@pytest.mark.parametrize("env, words", [
    ({"UCLOUD_API_WORKERS": "many"}, "api_workers (from environment) must be an integer"),
    ({"UCLOUD_LOG_JSON": "maybe"}, "log_json (from environment) must be true or false"),
    ({"UCLOUD_ETCD_TIMEOUT": "soon"}, "etcd_timeout (from environment) must be a number"),
    ({"UCLOUD_NO_SUCH_KEY": "1"}, "unknown key 'NO_SUCH_KEY'"),
    ({"UCLOUD_ETCD_ENDPOINTS": "localhost"}, "is not host:port"),
    ({"UCLOUD_API_BIND": "8080"}, "api_bind"),
    ({"UCLOUD_QEMU_ACCEL": "xen"}, "qemu_accel"),
])
def test_bad_values_are_one_clear_error(env, words):
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, env_file="/nonexistent")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_in_file(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("api_bnd: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'api_bnd'"):
        load_settings(env={}, config_file=config)



def test_daemon_stops_with_one_line_on_unreachable_etcd(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", "from ucloud_common.daemon import load_or_exit, connect_or_exit;"
                               "connect_or_exit('ucloud-test', load_or_exit('ucloud-test'))"],
        env={"PATH": "/usr/bin:/bin", "UCLOUD_ETCD_ENDPOINTS": "127.0.0.1:9", "UCLOUD_ETCD_RETRY_FOR": "1",
             "UCLOUD_ENV_FILE": str(tmp_path / "none")},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "ucloud-test: cannot reach etcd at 127.0.0.1:9 (set UCLOUD_ETCD_ENDPOINTS)"


def test_daemon_stops_with_one_line_on_bad_value(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", "from ucloud_common.daemon import load_or_exit; load_or_exit('ucloud-test')"],
        env={"PATH": "/usr/bin:/bin", "UCLOUD_API_WORKERS": "lots", "UCLOUD_ENV_FILE": str(tmp_path / "none")},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "ucloud-test: config: api_workers (from environment) must be an integer, got 'lots'"
