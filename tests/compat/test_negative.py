"""Malformed requests, unknown resources and authentication failures."""

import json
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import ACCESS_KEY, READONLY_KEY, READONLY_SECRET, make_client

TARGET = "AmazonEC2ContainerServiceV20141113."


def raw(endpoint, op, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(endpoint + "/", data=data, method="POST", headers={
        "X-Amz-Target": TARGET + op, "Content-Type": "application/x-amz-json-1.1", **(headers or {})})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


@pytest.fixture(scope="module")
def loose(server):
    """A client that skips botocore's own parameter validation."""
    return make_client(server.endpoint, parameter_validation=False)


def error(excinfo):
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def test_wrong_types_name_the_member(loose, cluster):
    with pytest.raises(ClientError) as e:
        loose.run_task(cluster=cluster, taskDefinition="x", count="three")
    code, msg = error(e)
    assert code == "InvalidParameterException" and "count" in msg
    with pytest.raises(ClientError) as e:
        loose.describe_tasks(cluster=cluster, tasks=[123])
    code, msg = error(e)
    assert code == "InvalidParameterException" and "tasks[0]" in msg
    with pytest.raises(ClientError) as e:
        loose.register_task_definition(family="f", containerDefinitions=[{"name": "a", "image": "b", "memory": "lots"}])
    code, msg = error(e)
    assert code == "InvalidParameterException" and "containerDefinitions[0].memory" in msg


def test_missing_members_and_ranges(loose, cluster):
    with pytest.raises(ClientError) as e:
        loose.run_task(cluster=cluster)
    code, msg = error(e)
    assert code == "InvalidParameterException" and "taskDefinition" in msg
    with pytest.raises(ClientError) as e:
        loose.list_tasks(cluster=cluster, maxResults=1000)
    code, msg = error(e)
    assert code == "InvalidParameterException" and "maxResults" in msg
    with pytest.raises(ClientError) as e:
        loose.run_task(cluster=cluster, taskDefinition="x", count=11)
    assert "count" in error(e)[1]
    with pytest.raises(ClientError) as e:
        loose.list_tasks(cluster=cluster, nextToken="garbage")
    assert "nextToken" in error(e)[1]


def test_unknown_cluster(ecs):
    for call in (lambda: ecs.list_tasks(cluster="does-not-exist"),
                 lambda: ecs.list_services(cluster="does-not-exist"),
                 lambda: ecs.describe_tasks(cluster="does-not-exist", tasks=["a"])):
        with pytest.raises(ClientError) as e:
            call()
        assert error(e)[0] == "ClusterNotFoundException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_protocol_errors(server, ecs):
    # The signing check comes first, so these go through a --no-auth server.
    from conftest import BerthServer
    s = BerthServer(["--no-auth"]).start()
    try:
        status, headers, body = raw(s.endpoint, "NoSuchOperation", {})
        assert status == 400 and body["__type"] == "UnknownOperationException"
        status, headers, body = raw(s.endpoint, "ListClusters", b"{not json")
        assert status == 400 and body["__type"] == "SerializationException"
        assert headers["X-Amzn-Errortype"] == "SerializationException"
        status, _, body = raw(s.endpoint, "CreateCluster", {"clusterName": "x" * 2_000_000})
        assert status == 400 and "body" in body["message"]
        status, _, body = raw(s.endpoint, "CreateCluster", {"clusterName": "has space"})
        assert status == 400 and body["__type"] == "InvalidParameterException" and "clusterName" in body["message"]
        status, _, body = raw(s.endpoint, "ListClusters", {})
        assert status == 200 and body["clusterArns"] == []
    finally:
        s.close()


def test_bad_signatures_are_refused_and_write_nothing(server, ecs, name):
    wrong_secret = make_client(server.endpoint, key=ACCESS_KEY, secret="not-the-secret")
    with pytest.raises(ClientError) as e:
        wrong_secret.create_cluster(clusterName=name)
    assert error(e)[0] == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    unknown_key = make_client(server.endpoint, key="AKIDUNKNOWN", secret="whatever")
    with pytest.raises(ClientError) as e:
        unknown_key.create_cluster(clusterName=name)
    assert error(e)[0] == "UnrecognizedClientException"

    status, _, body = raw(server.endpoint, "CreateCluster", {"clusterName": name})
    assert status == 403 and body["__type"] == "IncompleteSignatureException"
    status, _, body = raw(server.endpoint, "CreateCluster", {"clusterName": name},
                          {"Authorization": "AWS4-HMAC-SHA256 Credential=broken"})
    assert status == 403 and body["__type"] == "IncompleteSignatureException"

    assert ecs.describe_clusters(clusters=[name])["failures"][0]["reason"] == "MISSING"


def test_allowed_operations_per_key(server, name):
    ro = make_client(server.endpoint, key=READONLY_KEY, secret=READONLY_SECRET)
    ro.list_clusters()
    with pytest.raises(ClientError) as e:
        ro.create_cluster(clusterName=name)
    assert error(e)[0] == "AccessDeniedException"


def test_region_comes_from_the_signature(server, name):
    other = make_client(server.endpoint, region="ap-southeast-2")
    arn = other.create_cluster(clusterName=name)["cluster"]["clusterArn"]
    assert arn.startswith("arn:aws:ecs:ap-southeast-2:123456789012:cluster/")
