"""Sizing from the CPU quota (cgroup v2 cpu.max, v1 CFS quota) and the serving settings' defaults and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallnets.core.hardware import CpuInfo, cpu_quota, serving_cores
from smallnets.serve.settings import ServeSettings, SettingsError

SIXTY_FOUR_CORES = CpuInfo("x86_64", "test", (), 64, 64)


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # docker --cpus 1.5 on cgroup v2
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cpu_quota_is_read_from_either_cgroup_version(tmp_path: Path, files: dict[str, str], quota: float) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    assert cpu_quota(tmp_path) == quota


@pytest.mark.parametrize(("quota", "cores"), [(None, 64), (1.5, 2), (0.5, 1), (8.0, 8), (100.0, 64)])
def test_serving_cores_are_the_affinity_capped_by_the_quota(quota: float | None, cores: int) -> None:
    assert serving_cores(SIXTY_FOUR_CORES, quota) == cores


def test_this_machine_gets_a_consistent_default_sizing() -> None:
    settings = ServeSettings.from_env({})
    assert settings.cores == serving_cores(quota=cpu_quota())
    assert settings.workers >= 1 and settings.workers * settings.threads <= settings.cores
    assert settings.latency_target_s == pytest.approx(0.5 * settings.request_timeout_s) and settings.grpc_port == 0


def test_explicit_settings_win_and_bad_ones_name_the_variable() -> None:
    settings = ServeSettings.from_env(
        {
            "SMALLNETS_WORKERS": "3",
            "SMALLNETS_THREADS": "1",
            "SMALLNETS_LATENCY_TARGET_S": "5",
            "SMALLNETS_REQUEST_TIMEOUT_S": "2.5",
        }
    )
    assert (settings.workers, settings.threads, settings.latency_target_s, settings.request_timeout_s) == (3, 1, 5, 2.5)
    with pytest.raises(SettingsError, match="SMALLNETS_MAX_REQUEST_PIXELS"):
        ServeSettings.from_env({"SMALLNETS_MAX_REQUEST_PIXELS": "lots"})
    with pytest.raises(SettingsError, match="SMALLNETS_REQUEST_TIMEOUT_S"):
        ServeSettings.from_env({"SMALLNETS_REQUEST_TIMEOUT_S": "0"})
    with pytest.raises(SettingsError, match="SMALLNETS_GRPC_PORT"):
        ServeSettings.from_env({"SMALLNETS_GRPC_PORT": "70000"})
