"""The operator's files are valid: the compose file (checked by docker-compose itself, since no
container engine runs here) and the systemd units."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import yaml

from ucloud_common.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_KEYS = {f.name for f in fields(Settings)}
SCRIPTS = {"ucloud-api", "ucloud-scheduler", "ucloud-vm"}


def test_compose_file_is_valid_for_docker_compose():
    assert shutil.which("docker-compose"), "scripts/install-deps.sh installs docker-compose"
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_services_use_real_commands_and_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"etcd", "api", "scheduler"} <= set(services)
    for name in ("api", "scheduler"):
        service = services[name]
        assert service["command"][0] in SCRIPTS
        for key in service["environment"]:
            assert key.startswith("UCLOUD_") and key[len("UCLOUD_"):].lower() in SETTING_KEYS, key
        assert "etcd" in service["depends_on"]


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string((ROOT / "config" / "systemd" / name).read_text())
    return parser


def test_systemd_units_run_the_console_scripts_and_restart_on_failure():
    for script in SCRIPTS:
        service = unit(f"{script}.service")["Service"]
        assert Path(service["ExecStart"].split()[0]).name == script
        assert service["Restart"] == "on-failure"
        assert service.get("EnvironmentFile", "").lstrip("-") == "/etc/ucloud/ucloud.env"


def test_vm_unit_does_not_kill_its_vms_on_restart():
    service = unit("ucloud-vm.service")["Service"]
    assert service["KillMode"] == "process"
