"""Fixtures for the ECS compatibility suite: a real `berth server` child
process on a free loopback port, with a temp data dir, and boto3 clients
signed with the keys of its credentials file."""

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "AKIDBERTHCOMPAT"
SECRET_KEY = "berth-compat-secret/K7MDENG+bPxRfiCYEXAMPLEKEY"
READONLY_KEY = "AKIDBERTHREADONLY"
READONLY_SECRET = "berth-readonly-secret"
REGION = "eu-west-1"


def berth_binary() -> Path:
    override = os.environ.get("BERTH_BIN")
    if override:
        return Path(override)
    # A relative CARGO_TARGET_DIR is relative to where cargo ran: the repository.
    target = REPO / os.environ.get("CARGO_TARGET_DIR", "target")
    return target / "debug" / "berth"


class BerthServer:
    """A `berth server` child process; killed when closed."""

    def __init__(self, args, data_dir=None):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="berth-compat-"))
        self.args = args
        self.proc = None
        self.endpoint = None
        self.stderr_lines = []

    def start(self):
        binary = berth_binary()
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing; run `cargo build -p berth` first")
        self.proc = subprocess.Popen(
            [str(binary), "server", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"berth server exited: {''.join(self.stderr_lines)}")
                continue
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.endpoint = m.group(1)
                return self
        raise RuntimeError("berth server did not print its address within 30s")

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def credentials_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("creds") / "credentials"
    path.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\n"
        f"[readonly]\naws_access_key_id = {READONLY_KEY}\naws_secret_access_key = {READONLY_SECRET}\n"
        "berth_allowed_operations = ListClusters, DescribeClusters\n"
    )
    return path


@pytest.fixture(scope="session")
def server(credentials_file):
    s = BerthServer(["--credentials", str(credentials_file)]).start()
    yield s
    s.close()


def make_client(endpoint, key=ACCESS_KEY, secret=SECRET_KEY, region=REGION, **config):
    return boto3.client(
        "ecs",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config),
    )


@pytest.fixture(scope="session")
def ecs(server):
    return make_client(server.endpoint)


@pytest.fixture
def name():
    """A fresh resource name per test, so tests share one server safely."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def cluster(ecs, name):
    ecs.create_cluster(clusterName=name)
    return name


def register_instance(ecs, cluster, cpu=1024, memory=2048, attributes=None, instance_type="t3.medium"):
    doc = '{"instanceId": "i-%s", "availabilityZone": "eu-west-1a", "instanceType": "%s"}' % (
        uuid.uuid4().hex[:17],
        instance_type,
    )
    resp = ecs.register_container_instance(
        cluster=cluster,
        instanceIdentityDocument=doc,
        totalResources=[
            {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
            {"name": "MEMORY", "type": "INTEGER", "integerValue": memory},
            {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22", "2375"]},
        ],
        attributes=attributes or [],
    )
    return resp["containerInstance"]


def register_taskdef(ecs, family, cpu=256, memory=512, ports=None):
    return ecs.register_task_definition(
        family=family,
        containerDefinitions=[
            {
                "name": "app",
                "image": "busybox:latest",
                "cpu": cpu,
                "memory": memory,
                "essential": True,
                "command": ["sleep", "3600"],
                "portMappings": ports or [],
            }
        ],
    )["taskDefinition"]
