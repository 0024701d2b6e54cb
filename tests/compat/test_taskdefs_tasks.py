"""Task definitions and tasks through boto3, including paginators and waiters."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, make_client, register_instance, register_taskdef


def test_task_definition_revisions(ecs, name):
    first = ecs.register_task_definition(
        family=name,
        containerDefinitions=[{
            "name": "web", "image": "nginx:1.27", "memory": 256, "cpu": 128,
            "portMappings": [{"containerPort": 80, "hostPort": 8080, "protocol": "tcp"}],
            "environment": [{"name": "MODE", "value": "prod"}],
            "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}},
        }],
        volumes=[{"name": "data", "host": {"sourcePath": "/srv/data"}}],
        requiresCompatibilities=["EC2"],
        tags=[{"key": "app", "value": "web"}],
    )
    td = first["taskDefinition"]
    assert td["revision"] == 1 and td["status"] == "ACTIVE"
    assert td["taskDefinitionArn"] == f"arn:aws:ecs:{REGION}:123456789012:task-definition/{name}:1"
    assert first["tags"] == [{"key": "app", "value": "web"}]
    # Members the model does not carry come back as sent.
    assert td["volumes"] == [{"name": "data", "host": {"sourcePath": "/srv/data"}}]
    assert td["containerDefinitions"][0]["logConfiguration"]["options"] == {"max-size": "10m"}
    assert td["requiresCompatibilities"] == ["EC2"]

    second = register_taskdef(ecs, name)
    assert second["revision"] == 2
    assert ecs.describe_task_definition(taskDefinition=name)["taskDefinition"]["revision"] == 2
    assert ecs.describe_task_definition(taskDefinition=f"{name}:1")["taskDefinition"]["revision"] == 1

    listed = ecs.list_task_definitions(familyPrefix=name)["taskDefinitionArns"]
    assert [a.rsplit(":", 1)[1] for a in listed] == ["1", "2"]
    desc = ecs.list_task_definitions(familyPrefix=name, sort="DESC")["taskDefinitionArns"]
    assert [a.rsplit(":", 1)[1] for a in desc] == ["2", "1"]
    pages = list(ecs.get_paginator("list_task_definitions").paginate(
        familyPrefix=name, sort="DESC", PaginationConfig={"PageSize": 1}))
    assert [a for p in pages for a in p["taskDefinitionArns"]] == desc

    families = ecs.list_task_definition_families(familyPrefix=name)["families"]
    assert families == [name]

    dereg = ecs.deregister_task_definition(taskDefinition=f"{name}:2")["taskDefinition"]
    assert dereg["status"] == "INACTIVE"
    assert ecs.describe_task_definition(taskDefinition=name)["taskDefinition"]["revision"] == 1
    assert ecs.list_task_definitions(familyPrefix=name, status="INACTIVE")["taskDefinitionArns"] == [
        f"arn:aws:ecs:{REGION}:123456789012:task-definition/{name}:2"]

    deleted = ecs.delete_task_definitions(taskDefinitions=[f"{name}:2", f"{name}:1"])
    assert [t["status"] for t in deleted["taskDefinitions"]] == ["DELETE_IN_PROGRESS"]
    assert "ACTIVE" in deleted["failures"][0]["reason"]
    assert register_taskdef(ecs, name)["revision"] == 3, "revisions never repeat"

    with pytest.raises(ClientError) as e:
        ecs.describe_task_definition(taskDefinition=f"{name}:99")
    assert e.value.response["Error"]["Code"] == "ClientException"


def test_task_definition_validation_names_the_member(ecs, name):
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(family=name, containerDefinitions=[{"name": "a", "image": "x"}])
    err = e.value.response["Error"]
    assert err["Code"] == "InvalidParameterException"
    assert "containerDefinitions[0].memory" in err["Message"]


def test_run_task_reports_why_nothing_fits(ecs, cluster):
    register_taskdef(ecs, cluster, cpu=4096, memory=512)
    empty = ecs.run_task(cluster=cluster, taskDefinition=cluster)
    assert empty["tasks"] == [] and empty["failures"][0]["reason"] == "MISSING"
    ci = register_instance(ecs, cluster, cpu=1024, memory=2048)
    cpu = ecs.run_task(cluster=cluster, taskDefinition=cluster)
    assert cpu["tasks"] == []
    assert cpu["failures"] == [{"arn": ci["containerInstanceArn"], "reason": "RESOURCE:CPU"}]
    register_taskdef(ecs, cluster + "-mem", cpu=128, memory=4096)
    mem = ecs.run_task(cluster=cluster, taskDefinition=cluster + "-mem")
    assert mem["failures"][0]["reason"] == "RESOURCE:MEMORY"
    register_taskdef(ecs, cluster + "-port", cpu=128, memory=128,
                     ports=[{"containerPort": 22, "hostPort": 22}])
    ports = ecs.run_task(cluster=cluster, taskDefinition=cluster + "-port")
    assert ports["failures"][0]["reason"] == "RESOURCE:PORTS"
    register_taskdef(ecs, cluster + "-ok", cpu=128, memory=128)
    attr = ecs.run_task(cluster=cluster, taskDefinition=cluster + "-ok", placementConstraints=[
        {"type": "memberOf", "expression": "attribute:ecs.instance-type == p4d.24xlarge"}])
    assert attr["failures"][0]["reason"] == "ATTRIBUTE"


def test_run_describe_list_stop(ecs, cluster):
    ci = register_instance(ecs, cluster)
    # A draining instance still counts as capacity for RunTask, but the
    # launcher places nothing on it: the tasks stay PROVISIONING.
    ecs.update_container_instances_state(cluster=cluster, containerInstances=[ci["containerInstanceArn"]],
                                         status="DRAINING")
    td = register_taskdef(ecs, cluster, cpu=128, memory=128)
    run = ecs.run_task(cluster=cluster, taskDefinition=cluster, count=3, startedBy="ci-job",
                       overrides={"containerOverrides": [{"name": "app", "command": ["echo", "hi"],
                                                          "environment": [{"name": "A", "value": "1"}]}]},
                       tags=[{"key": "run", "value": "1"}])
    assert run["failures"] == []
    tasks = run["tasks"]
    assert len(tasks) == 3
    for t in tasks:
        assert t["lastStatus"] == "PROVISIONING" and t["desiredStatus"] == "RUNNING"
        assert t["taskDefinitionArn"] == td["taskDefinitionArn"]
        assert t["startedBy"] == "ci-job" and t["group"] == f"family:{cluster}"
        assert t["overrides"]["containerOverrides"][0]["command"] == ["echo", "hi"]
        assert t["taskArn"].startswith(f"arn:aws:ecs:{REGION}:123456789012:task/{cluster}/")
    arns = [t["taskArn"] for t in tasks]
    ids = [a.rsplit("/", 1)[1] for a in arns]

    desc = ecs.describe_tasks(cluster=cluster, tasks=[arns[0], ids[1], "f" * 32], include=["TAGS"])
    assert [t["taskArn"] for t in desc["tasks"]] == arns[:2]
    assert desc["tasks"][0]["tags"] == [{"key": "run", "value": "1"}]
    assert desc["failures"] == [{"arn": f"arn:aws:ecs:{REGION}:123456789012:task/{cluster}/{'f' * 32}",
                                 "reason": "MISSING"}]

    other = ecs.run_task(cluster=cluster, taskDefinition=cluster, startedBy="someone-else")["tasks"][0]
    assert sorted(ecs.list_tasks(cluster=cluster, startedBy="ci-job")["taskArns"]) == sorted(arns)
    assert len(ecs.list_tasks(cluster=cluster, family=cluster)["taskArns"]) == 4
    assert ecs.list_tasks(cluster=cluster, family=cluster, startedBy="someone-else")["taskArns"] == [
        other["taskArn"]]
    pages = list(ecs.get_paginator("list_tasks").paginate(cluster=cluster, PaginationConfig={"PageSize": 1}))
    assert len(pages) == 4
    assert sorted(a for p in pages for a in p["taskArns"]) == sorted(arns + [other["taskArn"]])

    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster=cluster)
    assert e.value.response["Error"]["Code"] in (
        "ClusterContainsContainerInstancesException", "ClusterContainsTasksException")

    stopped = ecs.stop_task(cluster=cluster, task=arns[0], reason="done")["task"]
    assert stopped["desiredStatus"] == "STOPPED" and stopped["stoppedReason"] == "done"
    ecs.get_waiter("tasks_stopped").wait(cluster=cluster, tasks=[arns[0]],
                                         WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    final = ecs.describe_tasks(cluster=cluster, tasks=[arns[0]])["tasks"][0]
    assert final["lastStatus"] == "STOPPED" and final["stopCode"] == "UserInitiated"
    assert arns[0] not in ecs.list_tasks(cluster=cluster)["taskArns"]
    assert ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"] == [arns[0]]

    # tasks_running cannot succeed before agents run tasks; its MISSING failure path works now.
    with pytest.raises(Exception) as w:
        ecs.get_waiter("tasks_running").wait(cluster=cluster, tasks=["0" * 32],
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 2})
    assert "MISSING" in str(w.value) or "failure" in str(w.value).lower()


def test_run_task_client_token_is_idempotent(ecs, cluster):
    register_instance(ecs, cluster)
    register_taskdef(ecs, cluster, cpu=64, memory=64)
    a = ecs.run_task(cluster=cluster, taskDefinition=cluster, count=2, clientToken="tok-1")["tasks"]
    b = ecs.run_task(cluster=cluster, taskDefinition=cluster, count=2, clientToken="tok-1")["tasks"]
    assert sorted(t["taskArn"] for t in a) == sorted(t["taskArn"] for t in b)
    assert len(ecs.list_tasks(cluster=cluster)["taskArns"]) == 2
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster=cluster, taskDefinition=cluster, count=1, clientToken="tok-1")
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"


def test_parallel_start_task_never_over_commits(server, ecs, cluster):
    ci = register_instance(ecs, cluster, cpu=1024, memory=1024)
    register_taskdef(ecs, cluster, cpu=100, memory=100, ports=[{"containerPort": 80}])
    arn = ci["containerInstanceArn"]

    def start(_):
        client = make_client(server.endpoint)
        out = client.start_task(cluster=cluster, taskDefinition=cluster, containerInstances=[arn])
        return len(out["tasks"]), [f["reason"] for f in out["failures"]], out["tasks"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(start, range(32)))
    started = sum(n for n, _, _ in results)
    assert started == 10, "exactly floor(1024/100) tasks fit"
    reasons = {r for _, rs, _ in results for r in rs}
    assert reasons <= {"RESOURCE:CPU", "RESOURCE:MEMORY"}
    host_ports = [b["hostPort"] for _, _, ts in results for t in ts for c in t["containers"]
                  for b in c["networkBindings"]]
    assert len(host_ports) == 10 and len(set(host_ports)) == 10, "dynamic ports are never shared"
    after = ecs.describe_container_instances(cluster=cluster, containerInstances=[arn])["containerInstances"][0]
    remaining = {r["name"]: r for r in after["remainingResources"]}
    assert remaining["CPU"]["integerValue"] == 1024 - 1000
    assert remaining["MEMORY"]["integerValue"] == 1024 - 1000
    assert after["pendingTasksCount"] == 10
    assert len(ecs.list_tasks(cluster=cluster, containerInstance=arn)["taskArns"]) == 10
