"""Configuration: YAML/schema agreement, validation, dask.config and env vars."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.config
import jsonschema
import pytest
import yaml

import qdask
from qdask.config import (
    CONFIG_PATH,
    SCHEMA_PATH,
    ClusterConfig,
    ConfigError,
    ElasticConfig,
    FaultToleranceConfig,
    HybridConfig,
    LoadBalancerConfig,
    MonitoringConfig,
    MultiGPUConfig,
)


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


def _schema_leaves(s, prefix=()):
    props = s.get("properties")
    if not props:
        yield prefix
        return
    for k, v in props.items():
        yield from _schema_leaves(v, prefix + (k,))


def test_yaml_matches_schema_both_ways():
    defaults, schema = _load(CONFIG_PATH), _load(SCHEMA_PATH)
    jsonschema.validate(defaults, schema)
    yaml_keys, schema_keys = set(_leaves(defaults)), set(_schema_leaves(schema))
    assert yaml_keys - schema_keys == set(), "keys in qdask.yaml missing from the schema"
    assert schema_keys - yaml_keys == set(), "keys in the schema missing from qdask.yaml"


def test_every_schema_leaf_is_documented():
    for leaf in _schema_leaves(_load(SCHEMA_PATH)):
        node = _load(SCHEMA_PATH)
        for k in leaf:
            node = node["properties"][k]
        assert node.get("description"), f"{'.'.join(leaf)} has no description"


def test_defaults_come_from_dask_config():
    assert ElasticConfig().max_nodes == dask.config.get("qdask.elastic.max-nodes")
    with dask.config.set({"qdask.elastic.max-nodes": 9, "qdask.load-balancer.check-interval": "250ms"}):
        assert ElasticConfig().max_nodes == 9
        assert LoadBalancerConfig().check_interval == pytest.approx(0.25)


def test_durations_and_sizes_are_parsed():
    assert MonitoringConfig(sampling_interval="100ms").sampling_interval == pytest.approx(0.1)
    assert ElasticConfig(cooldown_period="5min").cooldown_period == 300.0
    assert MultiGPUConfig(memory_per_gpu="8GiB").memory_per_gpu == 8 * 2**30
    assert ClusterConfig(memory_per_node="2GB").memory_per_node == 2_000_000_000


def test_configs_are_frozen():
    cfg = ElasticConfig()
    with pytest.raises(AttributeError):
        cfg.max_nodes = 10  # type: ignore[misc]


BAD = [
    (ElasticConfig, dict(min_nodes=5, max_nodes=2), "min_nodes"),
    (ElasticConfig, dict(scale_factor=1.0), "scale_factor"),
    (ElasticConfig, dict(scale_factor=0.5), "scale_factor"),
    (ElasticConfig, dict(cooldown_period=-1), "cooldown_period"),
    (ElasticConfig, dict(max_nodes=0), "max_nodes"),
    (ElasticConfig, dict(min_nodes=-1), "min_nodes"),
    (LoadBalancerConfig, dict(threshold=0), "threshold"),
    (LoadBalancerConfig, dict(threshold=1.5), "threshold"),
    (LoadBalancerConfig, dict(check_interval="-2s"), "check_interval"),
    (LoadBalancerConfig, dict(check_interval=0), "check_interval"),
    (LoadBalancerConfig, dict(algorithm="random"), "algorithm"),
    (ClusterConfig, dict(protocol="udp"), "protocol"),
    (ClusterConfig, dict(num_nodes=0), "num_nodes"),
    (ClusterConfig, dict(num_nodes="many"), "num_nodes"),
    (ClusterConfig, dict(num_nodes=2, quantum_devices=3), "quantum_devices"),
    (ClusterConfig, dict(enable_monitoring="yes"), "enable_monitoring"),
    (ClusterConfig, dict(memory_per_node="lots"), "memory_per_node"),
    (MonitoringConfig, dict(sampling_interval=0), "sampling_interval"),
    (MonitoringConfig, dict(sampling_interval="soon"), "sampling_interval"),
    (MonitoringConfig, dict(enable_tracing=True, trace_file=None), "trace_file"),
    (FaultToleranceConfig, dict(replication_factor=0), "replication_factor"),
    (FaultToleranceConfig, dict(recovery_mode="pray"), "recovery_mode"),
    (FaultToleranceConfig, dict(max_failures=0), "max_failures"),
    (FaultToleranceConfig, dict(checkpoint_interval=-5), "checkpoint_interval"),
    (MultiGPUConfig, dict(num_gpus=0), "num_gpus"),
    (MultiGPUConfig, dict(memory_per_gpu=-1), "memory_per_gpu"),
    (HybridConfig, dict(optimization_level="max"), "optimization_level"),
    (HybridConfig, dict(classical_nodes=0, quantum_nodes=0), "quantum_nodes"),
    (HybridConfig, dict(quantum_nodes=True), "quantum_nodes"),
]


@pytest.mark.parametrize("cls,kwargs,field", BAD, ids=[f"{c.__name__}-{f}-{i}" for i, (c, _, f) in enumerate(BAD)])
def test_bad_values_raise_config_error_naming_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == f"{cls.__name__}.{field}"
    msg = str(err)
    assert f"{cls.__name__}.{field}=" in msg and "allowed" in msg and "Fix:" in msg


def test_config_error_is_exported():
    assert qdask.ConfigError is ConfigError


def test_env_vars_reach_the_defaults():
    env = dict(os.environ, DASK_QDASK__ELASTIC__MAX_NODES="7", DASK_QDASK__LOAD_BALANCER__ALGORITHM="static")
    code = "import qdask; print(qdask.ElasticConfig().max_nodes, qdask.LoadBalancerConfig().algorithm)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "static"]


def test_bad_env_var_is_reported_as_config_error():
    env = dict(os.environ, DASK_QDASK__ELASTIC__SCALE_FACTOR="1")
    code = "import qdask; qdask.ElasticConfig()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "ElasticConfig.scale_factor=1" in out.stderr and "DASK_QDASK__ELASTIC__SCALE_FACTOR" in out.stderr
