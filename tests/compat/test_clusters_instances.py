"""Clusters, container instances and attributes through boto3."""

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, register_instance, register_taskdef


def test_cluster_lifecycle(ecs, name):
    created = ecs.create_cluster(clusterName=name, tags=[{"key": "team", "value": "infra"}],
                                 settings=[{"name": "containerInsights", "value": "enabled"}])["cluster"]
    assert created["clusterName"] == name
    assert created["status"] == "ACTIVE"
    assert created["clusterArn"] == f"arn:aws:ecs:{REGION}:123456789012:cluster/{name}"
    # CreateCluster is idempotent for an ACTIVE cluster.
    assert ecs.create_cluster(clusterName=name)["cluster"]["clusterArn"] == created["clusterArn"]

    desc = ecs.describe_clusters(clusters=[name, created["clusterArn"], "no-such-cluster"],
                                 include=["TAGS", "SETTINGS", "STATISTICS"])
    assert [c["clusterName"] for c in desc["clusters"]] == [name, name]
    c = desc["clusters"][0]
    assert c["tags"] == [{"key": "team", "value": "infra"}]
    assert {"name": "containerInsights", "value": "enabled"} in c["settings"]
    assert c["registeredContainerInstancesCount"] == 0
    assert any(s["name"] == "runningEC2TasksCount" for s in c["statistics"])
    assert desc["failures"] == [{"arn": f"arn:aws:ecs:{REGION}:123456789012:cluster/no-such-cluster",
                                 "reason": "MISSING"}]

    updated = ecs.update_cluster_settings(cluster=name, settings=[{"name": "containerInsights", "value": "disabled"}])
    assert {"name": "containerInsights", "value": "disabled"} in updated["cluster"]["settings"]
    ecs.update_cluster(cluster=name, settings=[{"name": "containerInsights", "value": "enabled"}])

    assert created["clusterArn"] in ecs.list_clusters()["clusterArns"]
    deleted = ecs.delete_cluster(cluster=name)["cluster"]
    assert deleted["status"] == "INACTIVE"
    assert created["clusterArn"] not in ecs.list_clusters()["clusterArns"]
    assert ecs.describe_clusters(clusters=[name])["clusters"][0]["status"] == "INACTIVE"
    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster=name)
    assert e.value.response["Error"]["Code"] == "ClusterNotFoundException"


def test_list_clusters_paginates(ecs, name):
    arns = {ecs.create_cluster(clusterName=f"{name}-{i}")["cluster"]["clusterArn"] for i in range(5)}
    pages = list(ecs.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) >= 3
    seen = [a for p in pages for a in p["clusterArns"]]
    assert len(seen) == len(set(seen)), "no cluster is listed twice"
    assert arns <= set(seen)


def test_container_instances(ecs, cluster):
    ci = register_instance(ecs, cluster, cpu=2048, memory=4096,
                           attributes=[{"name": "stack", "value": "prod"}])
    arn = ci["containerInstanceArn"]
    assert arn.startswith(f"arn:aws:ecs:{REGION}:123456789012:container-instance/{cluster}/")
    assert ci["status"] == "ACTIVE" and ci["agentConnected"] is True
    res = {r["name"]: r for r in ci["registeredResources"]}
    assert res["CPU"]["integerValue"] == 2048 and res["MEMORY"]["integerValue"] == 4096
    assert set(res["PORTS"]["stringSetValue"]) == {"22", "2375"}
    attrs = {a["name"]: a.get("value") for a in ci["attributes"]}
    assert attrs["stack"] == "prod" and attrs["ecs.instance-type"] == "t3.medium"

    other = register_instance(ecs, cluster, instance_type="m5.large")
    short_id = arn.rsplit("/", 1)[1]
    desc = ecs.describe_container_instances(cluster=cluster, containerInstances=[short_id, "0" * 32],
                                            include=["TAGS"])
    assert [c["containerInstanceArn"] for c in desc["containerInstances"]] == [arn]
    assert desc["failures"][0]["reason"] == "MISSING"

    listed = ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]
    assert set(listed) == {arn, other["containerInstanceArn"]}
    filtered = ecs.list_container_instances(cluster=cluster, filter="attribute:ecs.instance-type == m5.large")
    assert filtered["containerInstanceArns"] == [other["containerInstanceArn"]]
    pages = list(ecs.get_paginator("list_container_instances").paginate(
        cluster=cluster, PaginationConfig={"PageSize": 1}))
    assert sorted(a for p in pages for a in p["containerInstanceArns"]) == sorted(listed)

    drained = ecs.update_container_instances_state(cluster=cluster, containerInstances=[arn], status="DRAINING")
    assert drained["containerInstances"][0]["status"] == "DRAINING"
    assert ecs.list_container_instances(cluster=cluster, status="DRAINING")["containerInstanceArns"] == [arn]
    ecs.update_container_instances_state(cluster=cluster, containerInstances=[arn], status="ACTIVE")

    # A cluster with instances cannot be deleted.
    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster=cluster)
    assert e.value.response["Error"]["Code"] == "ClusterContainsContainerInstancesException"

    gone = ecs.deregister_container_instance(cluster=cluster, containerInstance=arn)["containerInstance"]
    assert gone["status"] == "INACTIVE"
    ecs.deregister_container_instance(cluster=cluster, containerInstance=other["containerInstanceArn"], force=True)
    assert ecs.list_container_instances(cluster=cluster)["containerInstanceArns"] == []
    ecs.delete_cluster(cluster=cluster)


def test_attributes(ecs, cluster):
    ci = register_instance(ecs, cluster)
    arn = ci["containerInstanceArn"]
    put = ecs.put_attributes(cluster=cluster, attributes=[
        {"name": "gpu", "value": "a100", "targetType": "container-instance", "targetId": arn},
        {"name": "ssd", "targetId": arn},
    ])
    assert {a["name"] for a in put["attributes"]} == {"gpu", "ssd"}
    listed = ecs.list_attributes(cluster=cluster, targetType="container-instance", attributeName="gpu")
    assert listed["attributes"] == [{"name": "gpu", "value": "a100", "targetType": "container-instance",
                                     "targetId": arn}]
    pages = list(ecs.get_paginator("list_attributes").paginate(
        cluster=cluster, targetType="container-instance", PaginationConfig={"PageSize": 2}))
    names = [a["name"] for p in pages for a in p["attributes"]]
    assert {"gpu", "ssd", "ecs.instance-type"} <= set(names) and len(names) == len(set(names))
    ecs.delete_attributes(cluster=cluster, attributes=[{"name": "gpu", "targetId": arn}])
    assert ecs.list_attributes(cluster=cluster, targetType="container-instance",
                               attributeName="gpu")["attributes"] == []
    with pytest.raises(ClientError) as e:
        ecs.put_attributes(cluster=cluster, attributes=[{"name": "x", "targetId": "0" * 32}])
    assert e.value.response["Error"]["Code"] == "TargetNotFoundException"


def test_tags(ecs, cluster):
    arn = ecs.describe_clusters(clusters=[cluster])["clusters"][0]["clusterArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "a", "value": "3"}])
    tags = ecs.list_tags_for_resource(resourceArn=arn)["tags"]
    assert sorted((t["key"], t["value"]) for t in tags) == [("a", "3"), ("b", "2")]
    ecs.untag_resource(resourceArn=arn, tagKeys=["a"])
    assert ecs.list_tags_for_resource(resourceArn=arn)["tags"] == [{"key": "b", "value": "2"}]

    td = register_taskdef(ecs, cluster + "-td")
    ecs.tag_resource(resourceArn=td["taskDefinitionArn"], tags=[{"key": "k", "value": "v"}])
    got = ecs.describe_task_definition(taskDefinition=td["taskDefinitionArn"], include=["TAGS"])
    assert got["tags"] == [{"key": "k", "value": "v"}]

    with pytest.raises(ClientError) as e:
        ecs.list_tags_for_resource(resourceArn=arn.replace(cluster, "missing-" + cluster))
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
