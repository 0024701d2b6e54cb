#!/usr/bin/env bash
# A shell session through the real `aws ecs` CLI against a running Berth
# server. Usage: awscli_sequence.sh ENDPOINT CLUSTER (credentials via the
# usual AWS_* environment variables).
set -euo pipefail
[ -n "${BERTH_TRACE:-}" ] && set -x
EP="$1"
C="$2"
aws() { command aws --endpoint-url "$EP" --output json "$@"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

aws ecs create-cluster --cluster-name "$C" | jq_py 'd["cluster"]["status"]' | grep -qx ACTIVE
aws ecs list-clusters | jq_py '"\n".join(d["clusterArns"])' | grep -q "cluster/$C\$"
CI=$(aws ecs register-container-instance --cluster "$C" \
  --total-resources name=CPU,type=INTEGER,integerValue=2048 name=MEMORY,type=INTEGER,integerValue=4096 \
  | jq_py 'd["containerInstance"]["containerInstanceArn"]')
# Draining: RunTask still accepts tasks, the launcher leaves them PROVISIONING.
aws ecs update-container-instances-state --cluster "$C" --container-instances "$CI" --status DRAINING \
  | jq_py 'd["containerInstances"][0]["status"]' | grep -qx DRAINING
aws ecs register-task-definition --family "$C-web" \
  --container-definitions '[{"name":"web","image":"nginx","memory":128,"portMappings":[{"containerPort":80}]}]' \
  | jq_py 'd["taskDefinition"]["revision"]' | grep -qx 1
aws ecs describe-task-definition --task-definition "$C-web" | jq_py 'd["taskDefinition"]["family"]' | grep -qx "$C-web"
aws ecs list-task-definitions --family-prefix "$C-web" | jq_py 'len(d["taskDefinitionArns"])' | grep -qx 1
TASK=$(aws ecs run-task --cluster "$C" --task-definition "$C-web" --count 2 --started-by cli \
  | jq_py 'd["tasks"][0]["taskArn"]')
aws ecs list-tasks --cluster "$C" --started-by cli | jq_py 'len(d["taskArns"])' | grep -qx 2
# The CLI paginates on its own; a page size of 1 must still list both.
aws ecs list-tasks --cluster "$C" --page-size 1 | jq_py 'len(d["taskArns"])' | grep -qx 2
aws ecs describe-tasks --cluster "$C" --tasks "$TASK" | jq_py 'd["tasks"][0]["lastStatus"]' | grep -qx PROVISIONING
aws ecs stop-task --cluster "$C" --task "$TASK" --reason "cli test" | jq_py 'd["task"]["desiredStatus"]' | grep -qx STOPPED
aws ecs wait tasks-stopped --cluster "$C" --tasks "$TASK"
aws ecs create-service --cluster "$C" --service-name web --task-definition "$C-web" --desired-count 0 \
  | jq_py 'd["service"]["status"]' | grep -qx ACTIVE
aws ecs wait services-stable --cluster "$C" --services web
aws ecs update-service --cluster "$C" --service web --desired-count 0 >/dev/null
aws ecs delete-service --cluster "$C" --service web | jq_py 'd["service"]["status"]' | grep -qx INACTIVE
aws ecs tag-resource --resource-arn "arn:aws:ecs:us-east-1:123456789012:cluster/$C" --tags key=env,value=test
aws ecs list-tags-for-resource --resource-arn "arn:aws:ecs:us-east-1:123456789012:cluster/$C" \
  | jq_py 'd["tags"][0]["value"]' | grep -qx test
# Errors come back as the ECS error type with a non-zero exit.
if aws ecs describe-services --cluster "no-such-$C" --services web 2>err.txt; then exit 1; fi
grep -q ClusterNotFoundException err.txt
echo "awscli sequence ok"
