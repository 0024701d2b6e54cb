"""The real `aws ecs` CLI, and state surviving a server restart."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ACCESS_KEY, SECRET_KEY, BerthServer, make_client, register_instance, register_taskdef

HERE = Path(__file__).resolve().parent


def test_aws_cli_sequence(server, name, tmp_path):
    aws = Path(sys.executable).parent / "aws"
    env = dict(os.environ,
               AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               PATH=f"{aws.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(["bash", str(HERE / "awscli_sequence.sh"), server.endpoint, name],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "awscli sequence ok" in out.stdout


def test_state_survives_restart(credentials_file, name):
    s = BerthServer(["--credentials", str(credentials_file)]).start()
    try:
        ecs = make_client(s.endpoint)
        ecs.create_cluster(clusterName=name)
        ci = register_instance(ecs, name)
        register_taskdef(ecs, name, cpu=64, memory=64)
        task = ecs.run_task(cluster=name, taskDefinition=name)["tasks"][0]
        s.stop()
        s.start()
        ecs = make_client(s.endpoint)
        assert ecs.describe_clusters(clusters=[name])["clusters"][0]["status"] == "ACTIVE"
        assert ecs.list_container_instances(cluster=name)["containerInstanceArns"] == [ci["containerInstanceArn"]]
        assert ecs.describe_tasks(cluster=name, tasks=[task["taskArn"]])["tasks"][0]["taskArn"] == task["taskArn"]
        assert register_taskdef(ecs, name)["revision"] == 2
    finally:
        s.close()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_api_on_etcd(credentials_file, name, tmp_path):
    """The same calls, with state surviving a restart, on the etcd backend
    (skipped without an etcd binary or a berth built with `--features etcd`)."""
    import shutil
    import time
    import urllib.request

    import pytest

    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if not etcd:
        pytest.skip("no etcd binary")
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    proc = subprocess.Popen(
        [etcd, "--name", "compat", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"compat={peer_url}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(client_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.2)
        s = BerthServer(["--credentials", str(credentials_file), "--store", "etcd", "--etcd-endpoints", client_url])
        try:
            s.start()
        except RuntimeError as e:
            if "without etcd support" in str(e):
                pytest.skip("berth was built without the etcd feature")
            raise
        ecs = make_client(s.endpoint)
        ecs.create_cluster(clusterName=name)
        ci = register_instance(ecs, name)
        register_taskdef(ecs, name, cpu=64, memory=64)
        ecs.update_container_instances_state(cluster=name, containerInstances=[ci["containerInstanceArn"]],
                                             status="DRAINING")
        arns = [t["taskArn"] for t in ecs.run_task(cluster=name, taskDefinition=name, count=3)["tasks"]]
        pages = list(ecs.get_paginator("list_tasks").paginate(cluster=name, PaginationConfig={"PageSize": 2}))
        assert sorted(a for p in pages for a in p["taskArns"]) == sorted(arns)
        s.stop()
        s.start()
        ecs = make_client(s.endpoint)
        assert len(ecs.describe_tasks(cluster=name, tasks=arns)["tasks"]) == 3
        ecs.stop_task(cluster=name, task=arns[0])
        ecs.get_waiter("tasks_stopped").wait(cluster=name, tasks=[arns[0]],
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 10})
        assert register_taskdef(ecs, name)["revision"] == 2
    finally:
        if s:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)
