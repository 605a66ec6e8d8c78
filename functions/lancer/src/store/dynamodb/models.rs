//! Model records in the task table: items `model#<tenant>#<model>` with the record as JSON
//! in `body` and its `revision`, which guards every write. They carry no tenant or status
//! attribute; a record that is served also carries `pipeline_active = serving`, which puts
//! it (alone among models) in the sparse index of what reconcile looks after.

use std::collections::HashMap;

use async_trait::async_trait;

use super::pipelines::{ACTIVE, PIPELINES_ACTIVE};
use super::{DynamoTaskStore, MAX_QUERY_PAGE, aws_error, is_condition_failure, n, s};
use crate::domain::model::{ModelName, ModelRecord};
use crate::domain::tenant::TenantName;
use crate::error::{Error, Result};
use crate::ports::ModelStore;

fn item_id(tenant: &TenantName, model: &ModelName) -> String {
    format!("model#{tenant}#{model}")
}

/// The value of `pipeline_active` that marks a served model's record.
const SERVED: &str = "serving";

fn record_of(
    item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> Result<ModelRecord> {
    let body = item
        .get("body")
        .and_then(|value| value.as_s().ok())
        .ok_or_else(|| Error::internal("model item without a body"))?;
    serde_json::from_str(body).map_err(Error::internal)
}

#[async_trait]
impl ModelStore for DynamoTaskStore {
    async fn model_record(
        &self,
        tenant: &TenantName,
        model: &ModelName,
    ) -> Result<Option<ModelRecord>> {
        let Some(item) = self.item(&item_id(tenant, model)).await? else {
            return Ok(None);
        };
        record_of(&item).map(Some)
    }

    async fn update_model(&self, mut next: ModelRecord) -> Result<ModelRecord> {
        // The write's condition is the compare-and-set: no read before it.
        let read_at = next.revision;
        next.revision += 1;
        let mut item = HashMap::from([
            ("id".to_owned(), s(&item_id(&next.tenant, &next.model))),
            ("revision".to_owned(), n(next.revision)),
            ("body".to_owned(), s(&serde_json::to_string(&next)?)),
        ]);
        if next.is_served() {
            item.insert(ACTIVE.to_owned(), s(SERVED));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let put = if read_at == 0 {
            put.condition_expression("attribute_not_exists(id)")
        } else {
            put.condition_expression("revision = :revision")
                .expression_attribute_values(":revision", n(read_at))
        };
        match put.send().await {
            Ok(_) => Ok(next),
            Err(err) if is_condition_failure(&err) => Err(Error::Stale(format!(
                "model {} changed during the update",
                next.model
            ))),
            Err(err) => Err(aws_error("PutItem", err)),
        }
    }

    async fn delete_model_record(&self, tenant: &TenantName, model: &ModelName) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("id", s(&item_id(tenant, model)))
            .send()
            .await
            .map_err(|err| aws_error("DeleteItem", err))?;
        Ok(())
    }

    async fn serving_models(&self) -> Result<Vec<ModelRecord>> {
        let mut records = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PIPELINES_ACTIVE)
                .limit(MAX_QUERY_PAGE as i32)
                .key_condition_expression("#hash = :hash")
                .expression_attribute_names("#hash", ACTIVE)
                .expression_attribute_values(":hash", s(SERVED))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| aws_error("Query", err))?;
            for item in page.items() {
                records.push(record_of(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(records),
            }
        }
    }
}
