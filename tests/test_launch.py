"""The deployment files in launch/: parse, shape, security settings, submit.sh behaviour.

Fast and offline: nothing here starts a cluster or touches the network.  submit.sh runs
against a stand-in `ray` executable that records how it was called.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
CLUSTER_FILES = ["aws.yaml", "gcp.yaml", "local.yaml"]
CLOUD_FILES = ["aws.yaml", "gcp.yaml"]
SUBMIT = LAUNCH / "submit.sh"


def load(name: str) -> dict:
    return yaml.safe_load((LAUNCH / name).read_text())


def rayjob_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((LAUNCH / "rayjob.yaml").read_text()) if d is not None]


def the_rayjob() -> dict:
    jobs = [d for d in rayjob_documents() if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def ray_start_commands(cfg: dict, key: str) -> list[str]:
    return [c for c in cfg[key] if "ray start" in c]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def ray_pin(text: str) -> str:
    match = re.search(r'ray\[default\]==([0-9][0-9.]*)', text)
    assert match, "no ray[default]==X pin"
    return match.group(1)


# --------------------------------------------------------------------------- YAML files


def test_launch_directory_holds_every_deployment_file():
    names = {p.name for p in LAUNCH.iterdir()}
    assert {"aws.yaml", "gcp.yaml", "local.yaml", "rayjob.yaml", "submit.sh", "README.md"} <= names


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_parses_into_mappings(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


# --------------------------------------------------------------------------- ray up cluster files


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_has_the_launcher_top_level_keys(name):
    cfg = load(name)
    for key in ("cluster_name", "provider", "auth", "file_mounts", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, f"{name} lacks {key}"
    assert cfg["provider"]["type"] in {"aws", "gcp", "local"}
    assert cfg["auth"]["ssh_user"]


@pytest.mark.parametrize("name", CLOUD_FILES)
def test_cloud_cluster_file_names_a_defined_head_node_type(name):
    cfg = load(name)
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_rays_own_schema_after_defaults_are_filled(name):
    """What `ray up` does before it contacts any cloud: merge defaults, then validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(load(name))
    util.validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CLOUD_FILES)
def test_cloud_cluster_has_a_gpu_node_type_for_the_learner(name):
    cfg = load(name)
    gpu_types = [
        key for key, t in cfg["available_node_types"].items()
        if t["resources"].get("GPU", 0) >= 1
        and (key == cfg["head_node_type"] or t.get("max_workers", 0) >= 1)
    ]
    assert gpu_types, f"{name}: no launchable node type advertises a GPU"


@pytest.mark.parametrize("name", CLOUD_FILES)
def test_cloud_cluster_has_a_cpu_worker_type_for_rollouts(name):
    cfg = load(name)
    cpu_workers = [
        key for key, t in cfg["available_node_types"].items()
        if key != cfg["head_node_type"]
        and t["resources"].get("CPU", 0) >= 8
        and t["resources"].get("GPU", 0) == 0
        and t.get("max_workers", 0) >= 1
    ]
    assert cpu_workers, f"{name}: no CPU-only worker type for rollout actors"


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_head_start_command_binds_the_dashboard_to_localhost(name):
    cfg = load(name)
    (head_start,) = ray_start_commands(cfg, "head_start_ray_commands")
    assert "--head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start.split()
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "0.0.0.0" not in cmd


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_worker_start_command_joins_the_heads_gcs(name):
    cfg = load(name)
    (worker_start,) = ray_start_commands(cfg, "worker_start_ray_commands")
    assert "--address=$RAY_HEAD_IP:6379" in worker_start.split()
    assert "--head" not in worker_start


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_ray_start_runs_with_token_authentication(name):
    cfg = load(name)
    starts = ray_start_commands(cfg, "head_start_ray_commands") + ray_start_commands(
        cfg, "worker_start_ray_commands")
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token ray start" in " ".join(cmd.split())
        assert "RAY_AUTH_MODE=disabled" not in cmd


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_ships_the_auth_token_to_every_node(name):
    cfg = load(name)
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["initialization_commands"])


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_setup_installs_torch_before_rlmaml(name):
    setup = load(name)["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if re.search(r'pip install "torch==', c))
    rlmaml_at = next(i for i, c in enumerate(setup) if re.search(r'pip install "rlmaml\[mujoco\]', c))
    assert torch_at < rlmaml_at


def test_aws_nodes_get_no_public_ip():
    cfg = load("aws.yaml")
    assert cfg["provider"]["use_internal_ips"] is True
    for key, node_type in cfg["available_node_types"].items():
        interfaces = node_type["node_config"]["NetworkInterfaces"]
        assert interfaces, key
        assert all(i["AssociatePublicIpAddress"] is False for i in interfaces), key


def test_gcp_nodes_get_no_external_ip():
    cfg = load("gcp.yaml")
    assert cfg["provider"]["use_internal_ips"] is True
    for key, node_type in cfg["available_node_types"].items():
        interfaces = node_type["node_config"]["networkInterfaces"]
        assert interfaces, key
        assert all("accessConfigs" not in i for i in interfaces), key


def test_local_cluster_lists_a_head_host_and_worker_hosts():
    cfg = load("local.yaml")
    provider = cfg["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"]
    assert isinstance(provider["worker_ips"], list) and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    # The on-premise provider defines its single node type itself and rejects others.
    assert "available_node_types" not in cfg


# --------------------------------------------------------------------------- KubeRay RayJob


def test_rayjob_is_a_kuberay_v1_rayjob():
    job = the_rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]


def test_rayjob_entrypoint_runs_rlmaml_train_against_the_cluster():
    argv = shlex.split(the_rayjob()["spec"]["entrypoint"])
    assert argv[:3] == ["rlmaml", "train", "halfcheetah-vel"]
    assert argv[-2:] == ["--address", "auto"]


def test_rayjob_has_a_gpu_worker_group_requesting_an_nvidia_gpu():
    groups = the_rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups
        if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in containers(g))
    ]
    assert gpu_groups
    assert all(g["maxReplicas"] >= 1 for g in gpu_groups)


def test_rayjob_has_a_cpu_worker_group_for_rollouts():
    groups = the_rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    cpu_groups = [
        g for g in groups
        if all("nvidia.com/gpu" not in c["resources"]["limits"] for c in containers(g))
    ]
    assert cpu_groups
    assert all(g["maxReplicas"] >= 1 for g in cpu_groups)


def test_rayjob_turns_on_token_authentication():
    assert the_rayjob()["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_rayjob_runs_an_image_with_rlmaml_installed():
    spec = the_rayjob()["spec"]
    cluster = spec["rayClusterSpec"]
    images = {c["image"] for c in containers(cluster["headGroupSpec"])}
    for group in cluster["workerGroupSpecs"]:
        images |= {c["image"] for c in containers(group)}
    assert len(images) == 1
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    installs_rlmaml = any("rlmaml" in p for p in runtime_env.get("pip", []))
    # A stock rayproject/ray image has no rlmaml; launch/Dockerfile builds one that has.
    assert installs_rlmaml or not images.pop().startswith("rayproject/")


def test_rayjob_bundle_limits_ingress_to_the_ray_pods():
    policies = [d for d in rayjob_documents() if d.get("kind") == "NetworkPolicy"]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    assert spec["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    assert "Ingress" in spec["policyTypes"]
    for rule in spec["ingress"]:
        assert all("ipBlock" not in peer for peer in rule["from"])


def test_ray_version_is_pinned_identically_across_launch_files():
    versions = {name: ray_pin((LAUNCH / name).read_text()) for name in CLUSTER_FILES}
    versions["rayjob.yaml"] = str(the_rayjob()["spec"]["rayClusterSpec"]["rayVersion"])
    base = re.search(r"rayproject/ray:([0-9][0-9.]*)-", (LAUNCH / "Dockerfile").read_text())
    assert base
    versions["Dockerfile"] = base.group(1)
    assert len(set(versions.values())) == 1, versions


# --------------------------------------------------------------------------- submit.sh


@pytest.fixture
def fake_ray(tmp_path):
    """A `ray` on PATH that records its argv, working directory and RAY_AUTH_MODE."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ray-call"
    script = bindir / "ray"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > "{log}.argv"\n'
        f'pwd > "{log}.cwd"\n'
        f'printf "%s" "${{RAY_AUTH_MODE:-}}" > "{log}.mode"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "RLMAML_"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", HOME=str(home))
    return {"env": env, "log": log, "home": home, "tmp": tmp_path}


def run_submit(args, env, cwd):
    return subprocess.run(["bash", str(SUBMIT), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def recorded_argv(fake) -> list[str]:
    return Path(f"{fake['log']}.argv").read_text().splitlines()


def test_submit_script_passes_bash_syntax_check():
    result = subprocess.run(["bash", "-n", str(SUBMIT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_submit_script_is_executable_and_strict():
    assert os.access(SUBMIT, os.X_OK)
    assert "set -euo pipefail" in SUBMIT.read_text()


def test_submit_without_arguments_prints_usage_and_exits_2(fake_ray):
    result = run_submit([], fake_ray["env"], fake_ray["tmp"])
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert not Path(f"{fake_ray['log']}.argv").exists()


def test_submit_sends_rlmaml_train_through_the_localhost_jobs_api(fake_ray):
    result = run_submit(["halfcheetah-vel", "rl.num_workers=32"], fake_ray["env"], fake_ray["tmp"])
    assert result.returncode == 0, result.stderr
    argv = recorded_argv(fake_ray)
    sep = argv.index("--")
    options, entrypoint = argv[:sep], argv[sep + 1:]
    assert options[:4] == ["job", "submit", "--address", "http://127.0.0.1:8265"]
    assert options[options.index("--working-dir") + 1] == "."
    assert entrypoint[:4] == ["rlmaml", "train", "halfcheetah-vel", "rl.num_workers=32"]
    assert entrypoint[-2:] == ["--address", "auto"]
    # --working-dir . is the repository root, wherever the script was called from.
    assert Path(f"{fake_ray['log']}.cwd").read_text().strip() == str(ROOT)
    assert Path(f"{fake_ray['log']}.mode").read_text() == "token"


def test_submit_gives_the_run_a_stable_directory_when_none_is_chosen(fake_ray):
    env = dict(fake_ray["env"], RLMAML_REMOTE_RUNS="/data/runs")
    assert run_submit(["nav2d"], env, fake_ray["tmp"]).returncode == 0
    run_dirs = [a for a in recorded_argv(fake_ray) if a.startswith("run.dir=")]
    assert len(run_dirs) == 1
    assert re.fullmatch(r"run\.dir=/data/runs/nav2d-\d{8}-\d{6}", run_dirs[0])


def test_submit_keeps_an_explicit_run_directory(fake_ray):
    args = ["ant-dir", "run.dir=/home/ubuntu/rlmaml-runs/ant-1"]
    assert run_submit(args, fake_ray["env"], fake_ray["tmp"]).returncode == 0
    run_dirs = [a for a in recorded_argv(fake_ray) if a.startswith("run.dir=")]
    assert run_dirs == ["run.dir=/home/ubuntu/rlmaml-runs/ant-1"]


def test_submit_refuses_to_run_without_an_auth_token(fake_ray):
    (fake_ray["home"] / ".ray" / "auth_token").unlink()
    result = run_submit(["halfcheetah-vel"], fake_ray["env"], fake_ray["tmp"])
    assert result.returncode == 1
    assert "auth token" in result.stderr
    assert not Path(f"{fake_ray['log']}.argv").exists()


# --------------------------------------------------------------------------- README


def readme() -> str:
    return (LAUNCH / "README.md").read_text()


def test_readme_requires_a_private_network():
    text = readme().lower()
    assert "private network" in text
    assert "token authentication" in text
    assert "127.0.0.1" in text and "ssh tunnel" in text


@pytest.mark.parametrize("port", ["6379", "8265", "10001", "8000", "10002-19999"])
def test_readme_names_each_port_that_must_never_face_the_internet(port):
    assert re.search(rf"\|\s*{re.escape(port)}\s*\|", readme()), f"port {port} missing from the table"


def test_readme_walks_from_a_laptop_to_a_cluster_and_back():
    text = readme()
    steps = ["rlmaml train nav2d", "ray up launch/aws.yaml", "ray attach launch/aws.yaml",
             "ray dashboard launch/aws.yaml", "launch/submit.sh halfcheetah-vel",
             "ray rsync-down launch/aws.yaml", "ray down launch/aws.yaml",
             "kubectl apply -n rlmaml -f launch/rayjob.yaml"]
    positions = [text.find(s) for s in steps]
    assert all(p >= 0 for p in positions), [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
