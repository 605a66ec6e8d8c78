//! S3 `ObjectCreated` notifications, delivered to the `ingest` function directly or inside
//! SQS messages, turned into ingestion tasks.

use serde_json::{Value, json};
use tracing::{info, warn};

use crate::domain::path::LakePath;
use crate::domain::tenant::Tenant;
use crate::error::{Error, Result};
use crate::http::AppState;
use crate::ports::Created;

/// One object an event says was created.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedObject {
    pub bucket: String,
    /// Decoded: S3 writes keys form-encoded in events (`+` for a space, `%2F` for `/`).
    pub key: String,
}

/// The created objects in an S3 event, or in the S3 events inside an SQS event. S3's test
/// event and records of other kinds are skipped.
pub fn created_objects(event: &Value) -> Result<Vec<CreatedObject>> {
    let records = event["Records"]
        .as_array()
        .ok_or_else(|| Error::invalid("not an S3 or SQS event: it has no Records array"))?;
    let mut objects = Vec::new();
    for record in records {
        match record["eventSource"].as_str() {
            Some("aws:sqs") => {
                let body = record["body"].as_str().unwrap_or_default();
                let inner: Value = serde_json::from_str(body).map_err(|err| {
                    Error::invalid(format!("an SQS message body is not JSON: {err}"))
                })?;
                if inner["Event"] == "s3:TestEvent" {
                    continue;
                }
                objects.extend(created_objects(&inner)?);
            }
            Some("aws:s3") => {
                let name = record["eventName"].as_str().unwrap_or_default();
                if !name.starts_with("ObjectCreated:") {
                    continue;
                }
                let (Some(bucket), Some(key)) = (
                    record["s3"]["bucket"]["name"].as_str(),
                    record["s3"]["object"]["key"].as_str(),
                ) else {
                    return Err(Error::invalid("an S3 record lacks its bucket or key"));
                };
                objects.push(CreatedObject {
                    bucket: bucket.to_owned(),
                    key: decode_key(key),
                });
            }
            other => warn!(source = ?other, "skipping a record that is not from S3 or SQS"),
        }
    }
    Ok(objects)
}

fn decode_key(key: &str) -> String {
    url::form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| key.to_owned())
}

/// The lake-relative key of an object, if it lies in the lake at `lake_root` (`s3://b/p`).
pub fn lake_key(lake_root: &str, object: &CreatedObject) -> Option<String> {
    let rest = lake_root.strip_prefix("s3://")?.trim_end_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket != object.bucket {
        return None;
    }
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
pub async fn ingest_event(state: &AppState, lake_root: &str, event: &Value) -> Result<Value> {
    let mut created = Vec::new();
    let mut ignored = Vec::new();
    for object in created_objects(event)? {
        let parsed = lake_key(lake_root, &object).map(|key| LakePath::parse("object key", &key));
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
        match state.ingest(&tenant, &relative).await? {
            Some(Created::New(task)) => created.push(task.id),
            Some(Created::Existing(task)) => {
                info!(%key, task = %task.id, "already ingested by this task");
            }
            None => {}
        }
    }
    Ok(json!({"created": created, "ignored": ignored}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_record(key: &str, event: &str) -> Value {
        json!({"eventSource": "aws:s3", "eventName": event,
               "s3": {"bucket": {"name": "lake"}, "object": {"key": key, "eTag": "e1"}}})
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
            lake_key("s3://lake", &object("lake", "raw/a")).as_deref(),
            Some("raw/a")
        );
        assert_eq!(
            lake_key("s3://lake/team/", &object("lake", "team/raw/a")).as_deref(),
            Some("raw/a")
        );
        assert_eq!(
            lake_key("s3://lake/team", &object("lake", "other/raw/a")),
            None
        );
        assert_eq!(lake_key("s3://lake", &object("elsewhere", "raw/a")), None);
        assert_eq!(lake_key("/local/lake", &object("lake", "raw/a")), None);
    }
}
