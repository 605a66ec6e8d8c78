#!/usr/bin/env bash
# LocalStack's ready hook: the task table, the lake bucket and the ingestion queue that
# infra/template.yaml declares on AWS, with the bucket notifying the queue for raw/ uploads.
set -euo pipefail
table="${LANCER_TASK_TABLE:-lancer-tasks}" bucket="${LANCER_BUCKET:-lancer-lake}" queue="${LANCER_INGEST_QUEUE:-lancer-ingest}"
awslocal dynamodb create-table --table-name "$table" --billing-mode PAY_PER_REQUEST \
  --attribute-definitions AttributeName=id,AttributeType=S AttributeName=tenant,AttributeType=S AttributeName=status,AttributeType=S \
    AttributeName=pipeline_tenant,AttributeType=S AttributeName=pipeline_active,AttributeType=S \
  --key-schema AttributeName=id,KeyType=HASH \
  --global-secondary-indexes \
    'IndexName=by_tenant,KeySchema=[{AttributeName=tenant,KeyType=HASH},{AttributeName=id,KeyType=RANGE}],Projection={ProjectionType=ALL}' \
    'IndexName=by_status,KeySchema=[{AttributeName=status,KeyType=HASH},{AttributeName=id,KeyType=RANGE}],Projection={ProjectionType=ALL}' \
    'IndexName=pipelines_by_tenant,KeySchema=[{AttributeName=pipeline_tenant,KeyType=HASH},{AttributeName=id,KeyType=RANGE}],Projection={ProjectionType=ALL}' \
    'IndexName=pipelines_active,KeySchema=[{AttributeName=pipeline_active,KeyType=HASH},{AttributeName=id,KeyType=RANGE}],Projection={ProjectionType=ALL}'
awslocal dynamodb update-time-to-live --table-name "$table" \
  --time-to-live-specification Enabled=true,AttributeName=expires_at
awslocal s3 mb "s3://$bucket"
queue_url=$(awslocal sqs create-queue --queue-name "$queue" --query QueueUrl --output text)
queue_arn=$(awslocal sqs get-queue-attributes --queue-url "$queue_url" --attribute-names QueueArn --query Attributes.QueueArn --output text)
awslocal s3api put-bucket-notification-configuration --bucket "$bucket" --notification-configuration \
  "{\"QueueConfigurations\": [{\"QueueArn\": \"$queue_arn\", \"Events\": [\"s3:ObjectCreated:*\"],
    \"Filter\": {\"Key\": {\"FilterRules\": [{\"Name\": \"prefix\", \"Value\": \"raw/\"}]}}}]}"
