//! The local AWS stack the AWS-level tests run against (`eval "$(localstack/up)"`: moto or
//! LocalStack on the host on this machine, LocalStack + MinIO where Docker runs), and fresh
//! resources in it per test.

/// A service's endpoint as the AWS SDKs resolve it: `AWS_ENDPOINT_URL_<SERVICE>`, else
/// `AWS_ENDPOINT_URL` (LocalStack on the host serves S3 and SQS, moto DynamoDB). The tests
/// refuse to guess one.
fn endpoint_of(service: &str) -> String {
    std::env::var(format!("AWS_ENDPOINT_URL_{service}"))
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| {
            panic!("AWS_ENDPOINT_URL is not set: start the local AWS stack with `eval \"$(localstack/up)\"` (tests/run does)")
        })
}

/// A name no other test uses, valid for a table or a bucket.
pub fn unique_name(kind: &str) -> String {
    format!("lancer-{kind}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    endpoint_of("DYNAMODB");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// One unsigned S3 `PUT` (a bucket, an object, a bucket's configuration): moto and
/// LocalStack take the requests S3's API defines without a signature, which spares the
/// tests an S3 SDK.
async fn s3_put(path: &str, body: impl Into<reqwest::Body>) {
    let response = reqwest::Client::new()
        .put(format!("{}/{path}", endpoint_of("S3")))
        .body(body)
        .send()
        .await
        .expect("the local S3 answers");
    assert!(
        response.status().is_success(),
        "PUT /{path}: {}",
        response.status()
    );
}

pub async fn create_bucket(name: &str) {
    s3_put(name, Vec::new()).await;
}

pub async fn put_object(bucket: &str, key: &str, body: Vec<u8>) {
    s3_put(&format!("{bucket}/{key}"), body).await;
}

/// One call of SQS's JSON protocol. The local stack routes a request to a service by the
/// credential scope of its Authorization header and checks no signature.
async fn sqs(action: &str, body: serde_json::Value) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(endpoint_of("SQS"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261123/us-east-1/sqs/aws4_request, \
             SignedHeaders=host, Signature=unsigned",
        )
        .header("x-amz-target", format!("AmazonSQS.{action}"))
        .header("content-type", "application/x-amz-json-1.0")
        .body(body.to_string())
        .send()
        .await
        .expect("the local SQS answers");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "SQS {action}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// A queue that receives the bucket's `ObjectCreated` notifications for keys under `prefix`,
/// as `infra/template.yaml` and `localstack/init` wire them; returns (queue URL, queue ARN).
pub async fn notify_queue_of_uploads(bucket: &str, prefix: &str) -> (String, String) {
    let url = sqs(
        "CreateQueue",
        serde_json::json!({"QueueName": unique_name("ingest")}),
    )
    .await["QueueUrl"]
        .as_str()
        .expect("queue url")
        .to_owned();
    let arn = sqs(
        "GetQueueAttributes",
        serde_json::json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
    )
    .await["Attributes"]["QueueArn"]
        .as_str()
        .expect("queue arn")
        .to_owned();
    let configuration = format!(
        "<NotificationConfiguration><QueueConfiguration><Id>ingest</Id><Queue>{arn}</Queue>\
         <Event>s3:ObjectCreated:*</Event><Filter><S3Key><FilterRule><Name>prefix</Name>\
         <Value>{prefix}</Value></FilterRule></S3Key></Filter></QueueConfiguration>\
         </NotificationConfiguration>"
    );
    s3_put(&format!("{bucket}?notification"), configuration).await;
    (url, arn)
}

/// Receives and deletes what the queue holds, as the SQS event source of a Lambda would,
/// until `quiet` passes without a message.
pub async fn drain_queue(url: &str, quiet: std::time::Duration) -> Vec<serde_json::Value> {
    let mut messages = Vec::new();
    let mut last_seen = std::time::Instant::now();
    while last_seen.elapsed() < quiet {
        let received = sqs(
            "ReceiveMessage",
            serde_json::json!({"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
        )
        .await;
        for message in received["Messages"].as_array().cloned().unwrap_or_default() {
            sqs(
                "DeleteMessage",
                serde_json::json!({"QueueUrl": url, "ReceiptHandle": message["ReceiptHandle"]}),
            )
            .await;
            messages.push(message);
            last_seen = std::time::Instant::now();
        }
    }
    messages
}

/// The event an SQS-triggered Lambda receives for `messages`.
pub fn sqs_event(queue_arn: &str, messages: &[serde_json::Value]) -> serde_json::Value {
    let records: Vec<_> = messages
        .iter()
        .map(|message| {
            serde_json::json!({
                "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"], "attributes": {}, "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"], "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn, "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}
