//! S3 `ObjectCreated` notifications, delivered to the `ingest` function directly or inside
//! SQS messages, turned into ingestion tasks. The events are read into types: SQS's and
//! S3's object and bucket are `aws_lambda_events`' own.

use aws_lambda_events::event::s3::S3Entity;
use aws_lambda_events::event::sqs::SqsEvent;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::application::{Ingested, Service};
use crate::domain::path::LakePath;
use crate::domain::tenant::Tenant;
use crate::error::{Error, Result};
use crate::lake::LakeRoot;
use crate::ports::Created;

/// An S3 event: the part of it ingestion reads. `aws_lambda_events`' `S3EventRecord` also
/// requires `eventTime` with a time zone, `userIdentity` and `requestParameters`, which S3
/// always sends but the local AWS stacks (moto, LocalStack) leave out or write otherwise.
#[derive(Debug, Deserialize)]
struct S3Event {
    #[serde(rename = "Records")]
    records: Vec<S3EventRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3EventRecord {
    #[serde(default)]
    event_source: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    s3: S3Entity,
}

/// One object an event says was created.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedObject {
    /// The S3 bucket the object was created in.
    pub bucket: String,
    /// Decoded: S3 writes keys form-encoded in events (`+` for a space, `%2F` for `/`).
    pub key: String,
}

/// The created objects in an S3 event, or in the S3 events inside an SQS event. S3's test
/// event and records of other kinds are skipped.
pub fn created_objects(event: &Value) -> Result<Vec<CreatedObject>> {
    let records = event
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::invalid("not an S3 or SQS event: it has no Records array"))?;
    // Lambda delivers one source per event: an SQS queue's messages, or S3's records.
    let from_sqs = records
        .first()
        .is_some_and(|record| record["eventSource"] == "aws:sqs");
    if !from_sqs {
        return Ok(objects_in(parse::<S3Event>(event.clone(), "S3")?));
    }
    let mut objects = Vec::new();
    for message in parse::<SqsEvent>(event.clone(), "SQS")?.records {
        let body: Value = serde_json::from_str(message.body.as_deref().unwrap_or_default())
            .map_err(|err| Error::invalid(format!("an SQS message body is not JSON: {err}")))?;
        if body["Event"] == "s3:TestEvent" {
            continue;
        }
        objects.extend(objects_in(parse::<S3Event>(body, "S3")?));
    }
    Ok(objects)
}

fn parse<T: serde::de::DeserializeOwned>(event: Value, kind: &str) -> Result<T> {
    serde_json::from_value(event)
        .map_err(|err| Error::invalid(format!("not a well-formed {kind} event: {err}")))
}

fn objects_in(event: S3Event) -> Vec<CreatedObject> {
    event.records.into_iter().filter_map(created).collect()
}

/// The object an `ObjectCreated:*` record names; `None` for any other record.
fn created(record: S3EventRecord) -> Option<CreatedObject> {
    if record.event_source.as_deref() != Some("aws:s3") {
        warn!(source = ?record.event_source, "skipping a record that is not from S3");
        return None;
    }
    if !record
        .event_name
        .as_deref()
        .is_some_and(|name| name.starts_with("ObjectCreated:"))
    {
        return None;
    }
    let (Some(bucket), Some(key)) = (record.s3.bucket.name, record.s3.object.key) else {
        warn!("skipping an S3 record without its bucket or key");
        return None;
    };
    Some(CreatedObject {
        bucket,
        key: decode_key(&key),
    })
}

fn decode_key(key: &str) -> String {
    url::form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| key.to_owned())
}

/// The lake-relative key of an object, if it lies in the lake (an `s3://bucket/prefix` root).
pub fn lake_key(lake: &LakeRoot, object: &CreatedObject) -> Option<String> {
    let LakeRoot::Url(url) = lake else {
        return None;
    };
    if url.scheme() != "s3" || url.host_str() != Some(object.bucket.as_str()) {
        return None;
    }
    let prefix = url.path().trim_matches('/');
    if prefix.is_empty() {
        return Some(object.key.clone());
    }
    object
        .key
        .strip_prefix(prefix)
        .and_then(|key| key.strip_prefix('/'))
        .map(str::to_owned)
}

/// Runs the ingestion rules on every object of an event; answers what it did. An object
/// outside the lake, or whose key is not a lake path, is ignored with a warning rather
/// than failing the batch, which SQS would only deliver again. A key under
/// `tenants/<name>/` is ingested for that tenant.
pub async fn ingest_event(service: &Service, lake: &LakeRoot, event: &Value) -> Result<Value> {
    let mut created = Vec::new();
    let mut ignored = Vec::new();
    for object in created_objects(event)? {
        let parsed = lake_key(lake, &object).map(|key| LakePath::parse("object key", &key));
        let key = match parsed {
            Some(Ok(key)) => key,
            Some(Err(err)) => {
                warn!(%err, "ignoring an object whose key is not a lake path");
                ignored.push(format!("s3://{}/{}", object.bucket, object.key));
                continue;
            }
            None => {
                ignored.push(format!("s3://{}/{}", object.bucket, object.key));
                continue;
            }
        };
        let (tenant, relative) = Tenant::of_key(&key);
        match service.ingest(&tenant, &relative).await? {
            Some(Ingested::Task(task)) => match *task {
                Created::New(task) => created.push(task.id.to_string()),
                Created::Existing(task) => {
                    info!(%key, task = %task.id, "already ingested by this task");
                }
            },
            Some(Ingested::Pipeline(pipeline)) => match *pipeline {
                Created::New(pipeline) => created.push(pipeline.id.to_string()),
                Created::Existing(pipeline) => {
                    info!(%key, pipeline = %pipeline.id, "already ingested by this pipeline");
                }
            },
            None => {}
        }
    }
    Ok(json!({"created": created, "ignored": ignored}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as S3 writes it, with the fields AWS always sends.
    fn s3_record(key: &str, event: &str) -> Value {
        json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
               "eventTime": "2026-12-01T10:00:00.000Z", "eventName": event,
               "userIdentity": {"principalId": "AWS:EXAMPLE"},
               "requestParameters": {"sourceIPAddress": "127.0.0.1"},
               "responseElements": {},
               "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "lake"},
                      "object": {"key": key, "size": 4, "eTag": "e1"}}})
    }

    #[test]
    fn keys_are_decoded_and_only_created_objects_count() {
        let event = json!({"Records": [
            s3_record("raw/my+file%2B1.csv", "ObjectCreated:Put"),
            s3_record("raw/gone.csv", "ObjectRemoved:Delete"),
            s3_record("raw/mnist/a.gz", "ObjectCreated:CompleteMultipartUpload"),
        ]});
        let objects = created_objects(&event).expect("parsed");
        assert_eq!(
            objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["raw/my file+1.csv", "raw/mnist/a.gz"]
        );
    }

    #[test]
    fn records_as_the_local_aws_stacks_write_them_are_read_too() {
        // moto: no userIdentity or requestParameters, and a time without a zone.
        let event = json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3",
            "awsRegion": "us-east-1", "eventTime": "2026-12-01T11:46:37.123456",
            "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "ingest",
                   "bucket": {"name": "lake", "arn": "arn:aws:s3:::lake"},
                   "object": {"key": "raw/a.csv", "size": 4, "eTag": "e1"}}}]});
        let objects = created_objects(&event).expect("parsed");
        assert_eq!(objects.len(), 1, "{objects:?}");
    }

    #[test]
    fn sqs_messages_carry_s3_events_and_the_test_event_is_skipped() {
        let inner = json!({"Records": [s3_record("raw/a.csv", "ObjectCreated:Put")]});
        let event = json!({"Records": [
            {"eventSource": "aws:sqs", "body": inner.to_string()},
            {"eventSource": "aws:sqs", "body": json!({"Service": "Amazon S3", "Event": "s3:TestEvent"}).to_string()},
        ]});
        let objects = created_objects(&event).expect("parsed");
        assert_eq!(
            objects,
            [CreatedObject {
                bucket: "lake".into(),
                key: "raw/a.csv".into()
            }]
        );
        assert!(created_objects(&json!({"detail": {}})).is_err());
        let bad = json!({"Records": [{"eventSource": "aws:sqs", "body": "not json"}]});
        assert!(created_objects(&bad).is_err());
    }

    #[test]
    fn keys_are_made_lake_relative_and_other_buckets_ignored() {
        let object = |bucket: &str, key: &str| CreatedObject {
            bucket: bucket.into(),
            key: key.into(),
        };
        assert_eq!(
            lake_key(&LakeRoot::parse("s3://lake"), &object("lake", "raw/a")).as_deref(),
            Some("raw/a")
        );
        assert_eq!(
            lake_key(
                &LakeRoot::parse("s3://lake/team/"),
                &object("lake", "team/raw/a")
            )
            .as_deref(),
            Some("raw/a")
        );
        assert_eq!(
            lake_key(
                &LakeRoot::parse("s3://lake/team"),
                &object("lake", "other/raw/a")
            ),
            None
        );
        assert_eq!(
            lake_key(&LakeRoot::parse("s3://lake"), &object("elsewhere", "raw/a")),
            None
        );
        assert_eq!(
            lake_key(&LakeRoot::parse("/local/lake"), &object("lake", "raw/a")),
            None
        );
    }
}
