"""The typed Ray configuration, the CLI's checks and ``serve.yaml`` (no Ray instance started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyco_rag.cli import build_parser, main
from hyco_rag.cli import serve as serve_cli
from hyco_rag.distributed import DeploymentOptions, RayServeConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ray"


def test_deployment_options_become_serve_options():
    fixed = DeploymentOptions(num_replicas=3, num_cpus=2, num_gpus=1, max_ongoing_requests=80).to_options()
    assert fixed == {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 1.0}, "max_ongoing_requests": 80}
    scaled = DeploymentOptions(autoscaling_config={"min_replicas": 1, "max_replicas": 8}).to_options()
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 8
    for bad in ({"num_replicas": 0}, {"num_cpus": -1}, {"num_gpus": True}, {"max_ongoing_requests": 0}):
        with pytest.raises(ValueError):
            DeploymentOptions(**bad)


def test_config_from_dict_refuses_unknown_keys_and_bad_values():
    config = RayServeConfig.from_dict({"engine": {"max_batch_size": 4}, "compressor": None, "retries": 0})
    assert config.engine.max_batch_size == 4 and config.compressor is None and config.retries == 0
    assert RayServeConfig.from_dict(config.to_dict()) == config  # what Serve ships to replicas round-trips
    with pytest.raises(ValueError, match="unknown key.*replica_count"):
        RayServeConfig.from_dict({"replica_count": 2})
    with pytest.raises(ValueError, match="engine: unknown key.*modle"):
        RayServeConfig.from_dict({"engine": {"modle": "x"}})
    with pytest.raises(ValueError, match="default_mode"):
        RayServeConfig.from_dict({"server": {"default_mode": "fast"}})
    with pytest.raises(ValueError, match="factory must be 'module:function'"):
        RayServeConfig.from_dict({"engine": {"factory": "no_colon"}})
    assert RayServeConfig().wait_s == 360.0 and RayServeConfig(request_timeout_s=5).wait_s == 5.0


def test_serve_ray_options_and_their_errors(capsys):
    args = build_parser().parse_args(["serve", "--ray", "--replicas", "2", "--max-replicas", "4", "--replica-gpus", "1"])
    config = serve_cli.ray_config(args)
    generator = config.generator_deployment.to_options()
    assert generator["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 16}
    assert generator["ray_actor_options"]["num_gpus"] == 1.0 and generator["max_ongoing_requests"] == 16 + 64
    assert serve_cli.ray_config(build_parser().parse_args(["serve", "--ray", "--compressor-replicas", "0"])).compressor is None
    assert main(["serve", "--ray", "--replicas", "0"]) == 2
    assert "--replicas must be >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--ray", "--replicas", "3", "--max-replicas", "2"]) == 2
    assert "--max-replicas (2) must be >= --replicas (3)" in capsys.readouterr().err
    assert main(["serve", "--ray", "--num-cpus", "0"]) == 2
    assert "--num-cpus must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["serve.yaml", "serve-cpu.yaml"])
def test_serve_yaml_builds_the_application(name):
    yaml = pytest.importorskip("yaml", reason="PyYAML (a Ray dependency) is needed to read serve.yaml")
    document = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    (application,) = document["applications"]
    assert application["import_path"] == "hyco_rag.distributed.serve:build_app"
    config = RayServeConfig.from_dict(application["args"])
    assert config.generator_deployment.autoscaling_config is not None
    from hyco_rag.distributed.serve import build_app

    built = build_app(application["args"])  # binding needs no running Ray
    assert type(built).__name__ == "Application"
