"""`clusterui export systemd|kubernetes`: golden files, `systemd-analyze verify`, schemas.

Golden files (tests/export/golden) are the review copy of what each exporter writes;
set CLUSTERUI_UPDATE_GOLDEN=1 to rewrite them after an intended change, and read
the diff. Paths of this checkout are written as /srv/app in them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from clusterui.core import config
from clusterui.export import ExportError, Options, exporter, write

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "export" / "golden"
SOURCES = {
    "example": ROOT / "ecosystem.example.yaml",
    "every_key": ROOT / "tests" / "export" / "every_key.yaml",
}
CLUSTERUI = str(Path(sys.executable).parent / "clusterui")
K8S_VERSION = kubernetes_validate.latest_version()
IMAGE = "registry.example.com/shop/app:1.4.2"


def run_export(fmt: str, source: str, **extra: str):
    path = SOURCES[source]
    loaded = config.load_ecosystem(path)
    opts = Options(source=path, clusterui=CLUSTERUI, **extra)
    return loaded.apps, exporter(fmt).export(loaded.apps, opts)


def normalised(text: str) -> str:
    return text.replace(CLUSTERUI, "/usr/bin/clusterui").replace(str(ROOT), "/srv/app")


def check_golden(result, where: Path) -> None:
    files = {name: normalised(text) for name, text in result.files.items()}
    if os.environ.get("CLUSTERUI_UPDATE_GOLDEN"):
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        for name, text in files.items():
            (where / name).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(where.iterdir())}
    assert sorted(files) == sorted(expected)
    for name, text in files.items():
        assert text == expected[name], f"{name} differs from {where / name}"


def verify(paths: list[Path]) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True
    )
    # verify exits 0 on mere warnings (unknown keys, bad values): those count too.
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


needs_verify = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_verify
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_systemd_units_verify_and_match_golden(source: str, tmp_path: Path) -> None:
    _apps, result = run_export("systemd", source)
    verify(write(result, tmp_path))
    check_golden(result, GOLDEN / "systemd" / source)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kubernetes_objects_validate_and_match_golden(source: str) -> None:
    apps, result = run_export("kubernetes", source, image=IMAGE, workdir="/app")
    kinds = []
    for text in result.files.values():
        for doc in yaml.safe_load_all(text):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises if invalid
            kinds.append((doc["kind"], doc["metadata"]["name"]))
    # One Deployment per app; a Service exactly for the apps listening on TCP.
    deployments = [n for k, n in kinds if k == "Deployment"]
    services = [n for k, n in kinds if k == "Service"]
    assert len(deployments) == len(apps)
    tcp = [a for a in apps if a.listen is not None and a.listen.kind == "tcp"]
    assert len(services) == len(tcp)
    check_golden(result, GOLDEN / "kubernetes" / source)


def test_kubernetes_maps_the_keys() -> None:
    apps, result = run_export("kubernetes", "every_key", image=IMAGE, workdir="/app")
    api = next(yaml.safe_load_all(result.files["clusterui-api.yaml"]))
    pod = api["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert api["spec"]["replicas"] == 3
    assert c["image"] == IMAGE
    assert c["command"] == ["python3", "-X", "dev"]
    # The corpus's cwd is outside its file's directory: host paths, and a note saying so.
    assert c["args"] == [f"{ROOT}/examples/web.py", "--greeting", "hi there", "100%", "$$(HOME)"]
    assert c["workingDir"] == str(ROOT)
    assert f"# {ROOT} is outside" in result.files["clusterui-api.yaml"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"GREETING": 'say "hi" $HOME 50%', "MODE": "prod", "PORT": "8080"}
    assert c["resources"]["limits"]["memory"] == str(300 * 2**20)
    # health_check (http /health, 5 s, 1.5 s, 4 failures, 2 s) makes both probes.
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["httpGet"] == live["httpGet"] == {"path": "/health", "port": "listen"}
    assert (ready["periodSeconds"], ready["timeoutSeconds"], ready["initialDelaySeconds"]) == (
        5,
        2,
        2,
    )
    assert (ready["failureThreshold"], live["failureThreshold"]) == (1, 4)
    assert c["ports"][0]["containerPort"] == 8080
    # kill_timeout 8 s, plus the preStop sleep that lets the endpoints go first.
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] == 8 + prestop
    # Without a health_check, probes come from listen; depends_on does not map.
    shared = next(yaml.safe_load_all(result.files["clusterui-shared.yaml"]))
    probe = shared["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"] == {"command": ["true"]}
    assert "# not mapped: depends_on cron-ish" in result.files["clusterui-shared.yaml"]
    assert "# not mapped: cron_restart" in result.files["clusterui-shared.yaml"]
    # An asgi app runs under clusterui's host in the image.
    hosted = next(yaml.safe_load_all(result.files["clusterui-hosted.yaml"]))
    hosted_c = hosted["spec"]["template"]["spec"]["containers"][0]
    assert hosted_c["command"] == ["python3", "-m", "clusterui.web", "asgi", "fastapi_main:app"]
    # A fork app without listen: a Deployment and nothing else.
    docs = list(yaml.safe_load_all(result.files["clusterui-cron-ish.yaml"]))
    assert [d["kind"] for d in docs] == ["Deployment"]
    assert "readinessProbe" not in docs[0]["spec"]["template"]["spec"]["containers"][0]
    # Unix-socket listen: no Service, said in a comment and a warning.
    text = result.files["clusterui-sock-app-v2.yaml"]
    assert "# not mapped: listen unix:" in text
    assert [d["kind"] for d in yaml.safe_load_all(text)] == ["Deployment"]
    assert any("sock_app.v2: listen unix:" in w for w in result.warnings)


def test_systemd_maps_the_keys() -> None:
    _apps, result = run_export("systemd", "every_key")
    service = result.files["clusterui-api.service"]
    assert "Requires=clusterui-api.socket" in service
    assert "Restart=on-failure" in service
    assert "RestartSec=250ms" in service
    assert "StartLimitBurst=5" in service
    assert "KillSignal=SIGTERM" in service
    assert "TimeoutStopSec=13000ms" in service  # kill_timeout 8 s + the stop margin
    assert f"MemoryMax={3 * 300 * 2**20 + 128 * 2**20}" in service
    assert 'Environment="GREETING=say \\"hi\\" $HOME 50%%"' in service
    assert f"WorkingDirectory={ROOT}" in service
    assert "--only api" in service
    socket_unit = result.files["clusterui-api.socket"]
    assert "ListenStream=127.0.0.1:8080" in socket_unit
    assert "FileDescriptorName=api" in socket_unit
    assert "ListenStream=[::]:9090" in result.files["clusterui-shared.socket"]
    assert "BindIPv6Only=both" in result.files["clusterui-shared.socket"]
    assert "ListenStream=/run/clusterui-corpus.sock" in result.files["clusterui-sock_app.v2.socket"]
    # shared depends_on cron-ish: one clusterui runs both (it waits for cron-ish itself).
    assert "clusterui-cron-ish.service" not in result.files
    assert "clusterui-cron-ish.socket" not in result.files  # no listen, no socket
    pair = result.files["clusterui-shared.service"]
    assert "--only shared,cron-ish" in pair
    assert "# also runs cron-ish" in pair
    assert "# each app's kill_signal is sent" in pair and "KillSignal=SIGTERM" in pair
    # Unmappable: a comment in the unit and a warning.
    assert "# not mapped: exp_backoff_restart_delay" in service
    assert any("api: exp_backoff_restart_delay" in w for w in result.warnings)
    target = result.files["clusterui.target"]
    assert (
        "Wants=clusterui-api.service clusterui-sock_app.v2.service clusterui-shared.service "
        "clusterui-hosted.service\n" in target
    )


def test_kubernetes_without_image_is_a_clear_error(cu) -> None:
    proc = cu.run("export", "kubernetes", str(SOURCES["example"]))
    assert proc.returncode == 2
    assert "needs --image IMAGE" in proc.stderr
    with pytest.raises(ExportError, match="--image"):
        run_export("k8s", "example")


def test_cli_writes_a_directory_or_prints(cu, tmp_path: Path) -> None:
    out = tmp_path / "units"
    proc = cu.run(
        "export", "systemd", str(SOURCES["every_key"]), str(out), "--env", "staging", check=True
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        run_export("systemd", "every_key")[1].files
    )
    service = (out / "clusterui-api.service").read_text()
    assert "--env staging" in service
    assert 'Environment="MODE=staging"' in service
    assert "api: exp_backoff_restart_delay" in proc.stderr
    args = ("export", "k8s", str(SOURCES["example"]), "--image", IMAGE, "--workdir", "/app")
    printed = cu.run(*args, check=True).stdout
    assert "# ==> clusterui-web.yaml <==" in printed
    assert "kind: Service" in printed
    assert "- /app/examples/web.py" in printed
