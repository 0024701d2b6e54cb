"""Services through boto3: stored and validated (the reconciler comes later)."""

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, register_taskdef


def test_service_lifecycle(ecs, cluster):
    td1 = register_taskdef(ecs, cluster)
    svc = ecs.create_service(cluster=cluster, serviceName="web", taskDefinition=cluster, desiredCount=0,
                             deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 50},
                             placementStrategy=[{"type": "spread", "field": "attribute:ecs.availability-zone"}],
                             tags=[{"key": "svc", "value": "web"}])["service"]
    assert svc["serviceArn"] == f"arn:aws:ecs:{REGION}:123456789012:service/{cluster}/web"
    assert svc["status"] == "ACTIVE" and svc["desiredCount"] == 0
    assert svc["taskDefinition"] == td1["taskDefinitionArn"]
    assert svc["deployments"][0]["status"] == "PRIMARY"
    assert svc["deploymentConfiguration"]["minimumHealthyPercent"] == 50

    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster=cluster, serviceName="web", taskDefinition=cluster, desiredCount=0)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"

    ecs.get_waiter("services_stable").wait(cluster=cluster, services=["web"],
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 5})

    td2 = register_taskdef(ecs, cluster)
    up = ecs.update_service(cluster=cluster, service="web", taskDefinition=f"{cluster}:2", desiredCount=2)["service"]
    assert up["taskDefinition"] == td2["taskDefinitionArn"] and up["desiredCount"] == 2
    assert [d["status"] for d in up["deployments"]] == ["PRIMARY", "ACTIVE"]

    desc = ecs.describe_services(cluster=cluster, services=["web", svc["serviceArn"], "nope"], include=["TAGS"])
    assert [s["serviceName"] for s in desc["services"]] == ["web", "web"]
    assert desc["services"][0]["tags"] == [{"key": "svc", "value": "web"}]
    assert desc["failures"][0]["reason"] == "MISSING"

    for i in range(3):
        ecs.create_service(cluster=cluster, serviceName=f"extra-{i}", taskDefinition=cluster, desiredCount=0)
    pages = list(ecs.get_paginator("list_services").paginate(cluster=cluster, PaginationConfig={"PageSize": 2}))
    arns = [a for p in pages for a in p["serviceArns"]]
    assert len(arns) == 4 and len(pages) == 2

    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster=cluster)
    assert e.value.response["Error"]["Code"] == "ClusterContainsServicesException"

    with pytest.raises(ClientError) as e:
        ecs.delete_service(cluster=cluster, service="web")
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    gone = ecs.delete_service(cluster=cluster, service="web", force=True)["service"]
    assert gone["status"] in ("DRAINING", "INACTIVE")
    ecs.get_waiter("services_inactive").wait(cluster=cluster, services=["web"],
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster=cluster, service="web", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ServiceNotActiveException"
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster=cluster, service="never-created", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ServiceNotFoundException"

    for i in range(3):
        ecs.delete_service(cluster=cluster, service=f"extra-{i}")
    ecs.delete_cluster(cluster=cluster)


def test_service_validation(ecs, cluster):
    register_taskdef(ecs, cluster)
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster=cluster, serviceName="bad", taskDefinition=cluster, desiredCount=1,
                           deploymentConfiguration={"maximumPercent": 50})
    err = e.value.response["Error"]
    assert err["Code"] == "InvalidParameterException" and "maximumPercent" in err["Message"]
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster=cluster, serviceName="bad", taskDefinition="no-such-family", desiredCount=1)
    assert "taskDefinition" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster="no-such-cluster", serviceName="x", taskDefinition=cluster, desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ClusterNotFoundException"
