//! The DynamoDB TaskStore of the AWS level. One table keyed by task id holds the records
//! (the whole task as JSON in `body`, plus the attributes the indexes and conditions need);
//! `by_tenant` (tenant, id) lists a tenant's tasks newest first, `by_status` (status, id)
//! serves dispatchers and sweepers across tenants. Task ids are UUIDv7, so id order is
//! creation order. Idempotency keys are reserved by items `key#<tenant>#<key>` written in
//! the same transaction as the task; they carry no tenant or status, so no index sees them.
//! Pipelines share the table under their own attributes and indexes (`pipelines`).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem,
};
use chrono::{DateTime, Utc};

use super::{
    existing_for_key, next_heartbeat, next_record, page_limit, page_of, page_start, task_not_found,
};
use crate::domain::path::Name;
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskId, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Created, ListQuery, TaskPage, TaskStore};

mod models;
mod pipelines;

pub use pipelines::{PIPELINES_ACTIVE, PIPELINES_BY_TENANT};

/// The index of a tenant's tasks, keyed (tenant, id): listings by tenant, newest first.
pub const BY_TENANT: &str = "by_tenant";
/// The index of tasks by status, keyed (status, id): the listings of dispatchers and
/// sweepers across tenants.
pub const BY_STATUS: &str = "by_status";
/// Finished tasks carry `expires_at` (epoch seconds) for the table's TTL.
pub const TTL_ATTRIBUTE: &str = "expires_at";
const FINISHED_TASK_TTL_DAYS: i64 = 90;

type Item = HashMap<String, AttributeValue>;

/// The `TaskStore` and `PipelineStore` over one DynamoDB table.
pub struct DynamoTaskStore {
    client: Client,
    table: String,
}

impl DynamoTaskStore {
    /// The store over the existing table `table` (`create_table` makes one for tests).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Creates the table with its two indexes and TTL, as `infra/template.yaml` declares it
    /// (for the local stack and tests; on AWS the template owns the table).
    pub async fn create_table(client: &Client, table: &str) -> Result<()> {
        let string_key = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(Error::internal)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(Error::internal)
        };
        let index = |name: &str, hash: &str| -> Result<GlobalSecondaryIndex> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(hash, KeyType::Hash)?)
                .key_schema(key("id", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(Error::internal)
        };
        client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_key("id")?)
            .attribute_definitions(string_key("tenant")?)
            .attribute_definitions(string_key("status")?)
            .attribute_definitions(string_key(pipelines::TENANT)?)
            .attribute_definitions(string_key(pipelines::ACTIVE)?)
            .key_schema(key("id", KeyType::Hash)?)
            .global_secondary_indexes(index(BY_TENANT, "tenant")?)
            .global_secondary_indexes(index(BY_STATUS, "status")?)
            .global_secondary_indexes(index(PIPELINES_BY_TENANT, pipelines::TENANT)?)
            .global_secondary_indexes(index(PIPELINES_ACTIVE, pipelines::ACTIVE)?)
            .send()
            .await
            .map_err(|err| aws_error("CreateTable", err))?;
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()?,
            )
            .send()
            .await
            .map_err(|err| aws_error("UpdateTimeToLive", err))?;
        Ok(())
    }

    /// The item keyed `id` (a task or a key reservation), read consistently.
    async fn item(&self, id: &str) -> Result<Option<Item>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| aws_error("GetItem", err))?;
        Ok(output.item)
    }

    async fn read(&self, id: &str) -> Result<Option<Task>> {
        self.item(id).await?.as_ref().map(task_of).transpose()
    }

    /// Reads, decides, and writes the record only if it still has the status and attempt
    /// it was read with.
    async fn update<F>(&self, id: &str, decide: F) -> Result<Task>
    where
        F: FnOnce(&Task) -> Result<Task>,
    {
        let current = self.read(id).await?.ok_or_else(|| task_not_found(id))?;
        let next = decide(&current)?;
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&next)?))
            .condition_expression("#status = :status AND attempt = :attempt")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(current.status.as_str()))
            .expression_attribute_values(":attempt", n(current.attempt))
            .send()
            .await;
        match written {
            Ok(_) => Ok(next),
            Err(err) if is_condition_failure(&err) => {
                Err(Error::Stale(format!("task {id} changed during the update")))
            }
            Err(err) => Err(aws_error("PutItem", err)),
        }
    }

    /// Writes `item` with the reservation item `reservation`, whose `holder_attribute`
    /// names `holder`, in one transaction that holds only if neither exists yet.
    pub(super) async fn put_reserved(
        &self,
        reservation: &str,
        holder_attribute: &str,
        holder: &str,
        item: Item,
    ) -> Result<Reserved> {
        let put = |item: Item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(id)")
                .build()
                .map_err(Error::internal)
        };
        let reserve = HashMap::from([
            ("id".to_owned(), s(reservation)),
            (holder_attribute.to_owned(), s(holder)),
        ]);
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put(reserve)?).build())
            .transact_items(TransactWriteItem::builder().put(put(item)?).build())
            .send()
            .await;
        let err = match written {
            Ok(_) => return Ok(Reserved::Written),
            Err(err) => err,
        };
        let canceled = err
            .as_service_error()
            .is_some_and(|e| e.is_transaction_canceled_exception());
        if !canceled {
            return Err(aws_error("TransactWriteItems", err));
        }
        // The key (or, never in practice, the id) is taken: name its holder.
        let holder = self
            .item(reservation)
            .await?
            .as_ref()
            .and_then(|item| item.get(holder_attribute))
            .and_then(|value| value.as_s().ok())
            .cloned();
        Ok(Reserved::Taken(holder))
    }

    async fn create_keyed(&self, task: Task, key: &str) -> Result<Created> {
        let reservation = key_item_id(task.tenant.as_str(), key);
        let holder_id = match self
            .put_reserved(&reservation, "task_id", task.id.as_str(), item_of(&task)?)
            .await?
        {
            Reserved::Written => return Ok(Created::New(task)),
            Reserved::Taken(holder) => holder,
        };
        match holder_id {
            Some(id) => match self.read(&id).await? {
                Some(existing) => existing_for_key(existing, &task),
                // The holder expired (TTL) while its reservation stayed: the key is free.
                None => self.take_over(task, &reservation, &id).await,
            },
            None => Err(Error::Conflict(format!("task {} already exists", task.id))),
        }
    }

    /// Moves a reservation whose task no longer exists to `task`, in one transaction that
    /// holds only if the reservation still names the gone task; of two racing takers, the
    /// loser is answered with the winner's task.
    async fn take_over(&self, task: Task, reservation: &str, gone: &str) -> Result<Created> {
        let reserve = Put::builder()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                ("id".to_owned(), s(reservation)),
                ("task_id".to_owned(), s(task.id.as_str())),
            ])))
            .condition_expression("task_id = :gone")
            .expression_attribute_values(":gone", s(gone))
            .build()?;
        let create = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item_of(&task)?))
            .condition_expression("attribute_not_exists(id)")
            .build()?;
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(reserve).build())
            .transact_items(TransactWriteItem::builder().put(create).build())
            .send()
            .await;
        match written {
            Ok(_) => {
                tracing::info!(task = %task.id, gone, "idempotency key taken over from an expired task");
                Ok(Created::New(task))
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_transaction_canceled_exception()) =>
            {
                let winner = self.item(reservation).await?;
                let winner = winner
                    .as_ref()
                    .and_then(|item| item.get("task_id")?.as_s().ok());
                match winner {
                    Some(id) => match self.read(id).await? {
                        Some(existing) => existing_for_key(existing, &task),
                        None => Err(Error::Conflict(
                            "idempotency key is being reused; try again".into(),
                        )),
                    },
                    None => Err(Error::Conflict(
                        "idempotency key is being reused; try again".into(),
                    )),
                }
            }
            Err(err) => Err(aws_error("TransactWriteItems", err)),
        }
    }

    /// One index query, newest first, below `before`; the filter applies after DynamoDB's
    /// page limit, so pages are read until `want` records are found or none are left.
    async fn query_index(
        &self,
        index: &str,
        hash: (&str, &str),
        before: Option<&str>,
        filter: Filter<'_>,
        want: usize,
    ) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .scan_index_forward(false)
                .limit(want.min(MAX_QUERY_PAGE) as i32)
                .expression_attribute_names("#hash", hash.0)
                .expression_attribute_values(":hash", s(hash.1))
                .set_exclusive_start_key(start.take());
            query = match before {
                Some(before) => query
                    .key_condition_expression("#hash = :hash AND id < :before")
                    .expression_attribute_values(":before", s(before)),
                None => query.key_condition_expression("#hash = :hash"),
            };
            let mut conditions = Vec::new();
            if let Some(status) = filter.status {
                conditions.push("#status = :status");
                query = query
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            if let Some(prefix) = filter.name_prefix {
                conditions.push("begins_with(#name, :name)");
                query = query
                    .expression_attribute_names("#name", "name")
                    .expression_attribute_values(":name", s(prefix));
            }
            if !conditions.is_empty() {
                query = query.filter_expression(conditions.join(" AND "));
            }
            let page = query.send().await.map_err(|err| aws_error("Query", err))?;
            for item in page.items() {
                tasks.push(task_of(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) if tasks.len() < want => start = Some(key.clone()),
                _ => break,
            }
        }
        tasks.truncate(want);
        Ok(tasks)
    }

    /// Every task, newest first: a scan, for the rare listing across tenants and states.
    async fn scan_all(&self, before: Option<&str>) -> Result<Vec<Task>> {
        let mut tasks = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("attribute_exists(tenant)")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| aws_error("Scan", err))?;
            for item in page.items() {
                tasks.push(task_of(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
        }
        tasks.retain(|task| before.is_none_or(|before| task.id.as_str() < before));
        tasks.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(tasks)
    }
}

/// What a listing keeps beyond its index's key: DynamoDB applies it after reading a page.
#[derive(Clone, Copy, Default)]
struct Filter<'a> {
    status: Option<TaskStatus>,
    name_prefix: Option<&'a str>,
}

/// What `put_reserved` did.
pub(super) enum Reserved {
    Written,
    /// The reservation exists already: the id it names, if any (none: the item's own id
    /// was taken).
    Taken(Option<String>),
}

/// DynamoDB reads at most 1 MB per page anyway; this bounds each round trip.
const MAX_QUERY_PAGE: usize = 500;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn key_item_id(tenant: &str, key: &str) -> String {
    format!("key#{tenant}#{key}")
}

fn item_of(task: &Task) -> Result<Item> {
    let mut item = HashMap::from([
        ("id".to_owned(), s(task.id.as_str())),
        ("tenant".to_owned(), s(task.tenant.as_str())),
        ("status".to_owned(), s(task.status.as_str())),
        // Beside the body so that a listing can filter on it.
        ("name".to_owned(), s(&task.spec.name)),
        ("attempt".to_owned(), n(task.attempt)),
        ("body".to_owned(), s(&serde_json::to_string(task)?)),
    ]);
    if let Some(finished) = task.finished_at {
        let expires = finished + chrono::Duration::days(FINISHED_TASK_TTL_DAYS);
        item.insert(TTL_ATTRIBUTE.into(), n(expires.timestamp()));
    }
    Ok(item)
}

fn task_of(item: &Item) -> Result<Task> {
    let body = item
        .get("body")
        .and_then(|value| value.as_s().ok())
        .ok_or_else(|| Error::internal("task item without a body"))?;
    serde_json::from_str(body).map_err(Error::internal)
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

/// A DynamoDB call that failed: the operation, and the SDK's error whole (its service
/// error and the transport's below it), for the log.
#[derive(Debug, thiserror::Error)]
#[error("DynamoDB {operation}")]
pub(crate) struct DynamoError {
    operation: &'static str,
    #[source]
    source: crate::error::Source,
}

/// AWS failures are internal: the detail goes to the log, never to a client.
fn aws_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::internal(DynamoError {
        operation,
        source: Box::new(err),
    })
}

#[async_trait]
impl TaskStore for DynamoTaskStore {
    async fn create(&self, task: Task) -> Result<Created> {
        if let Some(key) = task.spec.idempotency_key.clone() {
            return self.create_keyed(task, &key).await;
        }
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&task)?))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match written {
            Ok(_) => Ok(Created::New(task)),
            Err(err) if is_condition_failure(&err) => {
                Err(Error::Conflict(format!("task {} already exists", task.id)))
            }
            Err(err) => Err(aws_error("PutItem", err)),
        }
    }

    async fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        let id = id.as_str();
        if id.contains('#') {
            return Ok(None); // a reservation or a pipeline, not a task
        }
        self.read(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage> {
        let before = page_start(query.page_token.as_ref());
        let limit = page_limit(query.limit);
        // One more than asked tells whether another page exists.
        let want = limit + 1;
        let name_prefix = query.name_prefix.as_ref().map(Name::as_str);
        let tasks = match (&query.tenant, query.status) {
            (Some(tenant), status) => {
                let filter = Filter {
                    status,
                    name_prefix,
                };
                self.query_index(
                    BY_TENANT,
                    ("tenant", tenant.as_str()),
                    before.as_deref(),
                    filter,
                    want,
                )
                .await?
            }
            (None, Some(status)) => {
                let filter = Filter {
                    status: None,
                    name_prefix,
                };
                let hash = ("status", status.as_str());
                self.query_index(BY_STATUS, hash, before.as_deref(), filter, want)
                    .await?
            }
            (None, None) => {
                let mut all = self.scan_all(before.as_deref()).await?;
                all.retain(|task| name_prefix.is_none_or(|p| task.spec.name.starts_with(p)));
                all
            }
        };
        Ok(page_of(tasks, limit))
    }

    async fn transition(&self, id: &TaskId, guard: Guard, change: Change) -> Result<Task> {
        self.update(id.as_str(), move |current| {
            next_record(current, guard, change)
        })
        .await
    }

    async fn heartbeat(&self, id: &TaskId, attempt: u32, beat: Heartbeat) -> Result<Task> {
        self.update(id.as_str(), move |current| {
            next_heartbeat(current, attempt, &beat)
        })
        .await
    }

    async fn stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<Task>> {
        let running = self
            .query_index(
                BY_STATUS,
                ("status", TaskStatus::Running.as_str()),
                None,
                Filter::default(),
                usize::MAX,
            )
            .await?;
        Ok(running
            .into_iter()
            .filter(|task| task.heartbeat_at.is_none_or(|at| at < cutoff))
            .collect())
    }
}
