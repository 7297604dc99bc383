//! `ExplainQuery`: one statement's plan on every copy of a database, and
//! where the plans' shapes differ.
//!
//! The plan is `EXPLAIN (FORMAT JSON)` inside `BEGIN READ ONLY`, always
//! rolled back; `ANALYZE` (which runs the statement) only for MASTER and
//! only for a statement classified as a read, so even a classifier miss
//! fails in the READ ONLY transaction instead of writing. A READER's plan
//! is made under the database's reader login (EXPLAIN checks the
//! statement's privileges like running it would).
//!
//! A plan's shape is its node types in order, with the relation and index
//! each scans: two copies whose shapes differ answer the same statement
//! differently, the classic case being an index present on one copy only.

use std::sync::Arc;
use std::time::Duration;

use pgfleet_registry::{Registry, Route, Target};
use pgfleet_sqlcheck::StatementClass;
use serde_json::Value;

use crate::RequestError;
use crate::identity::{Identity, Role};
use crate::query::{FailureCode, TargetFailure};

/// How long one plan may take on a target (ANALYZE runs the statement).
pub const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Commands EXPLAIN accepts.
const EXPLAINABLE: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"];

/// What ExplainQuery asks.
#[derive(Debug, Clone, Default)]
pub struct ExplainSpec {
    pub query: String,
    pub database: String,
    pub analyze: bool,
}

/// The plan of one copy.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub target: Target,
    pub plan: Result<Plan, TargetFailure>,
}

/// A plan as PostgreSQL wrote it, and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub json: String,
    /// One line per node, indented two spaces per level.
    pub shape: Vec<String>,
    pub total_cost: f64,
}

/// Every copy's plan and the differences between their shapes.
#[derive(Debug, Clone)]
pub struct Explained {
    pub plans: Vec<TargetPlan>,
    pub differences: Vec<String>,
}

/// Explains `spec.query` on every copy of `spec.database`.
pub async fn explain(
    registry: &Arc<Registry>,
    identity: &Identity,
    spec: &ExplainSpec,
    max_query_bytes: u64,
) -> Result<Explained, RequestError> {
    if spec.query.trim().is_empty() {
        return Err(RequestError::invalid("query", "must not be empty"));
    }
    if spec.query.len() as u64 > max_query_bytes {
        return Err(RequestError::invalid(
            "query",
            format!("longer than query.max_query_bytes ({max_query_bytes} bytes)"),
        ));
    }
    let analysis = crate::query::parser::analyze(&spec.query)
        .await?
        .map_err(|error| RequestError::invalid("query", error.message()))?;
    let [statement] = analysis.statements.as_slice() else {
        return Err(RequestError::invalid("query", "must hold exactly one statement"));
    };
    if !EXPLAINABLE.contains(&statement.command.as_str()) {
        return Err(RequestError::invalid(
            "query",
            format!(
                "{} cannot be explained (SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES or TABLE)",
                statement.command
            ),
        ));
    }
    if spec.analyze {
        if identity.role != Role::Master {
            return Err(RequestError::PermissionDenied(
                "analyze runs the statement: MASTER only".to_owned(),
            ));
        }
        if statement.class != StatementClass::Read {
            return Err(RequestError::invalid(
                "analyze",
                "only a read may be explained with ANALYZE (it runs the statement)",
            ));
        }
    }
    let targets = super::resolve_targets(registry, identity, &spec.database, "")?;
    if identity.role == Role::Reader
        && let Some(target) = targets.iter().find(|target| {
            registry
                .database_config(target)
                .is_some_and(|db| db.reader_user.is_none())
        })
    {
        return Err(RequestError::FailedPrecondition(
            pgfleet_registry::RegistryError::NoReaderLogin {
                target: target.clone(),
            }
            .to_string(),
        ));
    }
    let route = if identity.role == Role::Reader {
        Route::ReaderLogin
    } else {
        Route::Read
    };
    let options = if spec.analyze {
        "FORMAT JSON, VERBOSE, ANALYZE, BUFFERS"
    } else {
        // VERBOSE: each scan names its relation's schema.
        "FORMAT JSON, VERBOSE"
    };
    let text = format!(
        "EXPLAIN ({options}) {}",
        statement.span.text.trim_end().trim_end_matches(';')
    );
    let plans = futures::future::join_all(targets.into_iter().map(|target| {
        let registry = Arc::clone(registry);
        let text = text.clone();
        async move {
            let plan = plan_on(&registry, &target, route, &text).await;
            TargetPlan { target, plan }
        }
    }))
    .await;
    let differences = differences(&plans);
    Ok(Explained { plans, differences })
}

async fn plan_on(
    registry: &Registry,
    target: &Target,
    route: Route,
    text: &str,
) -> Result<Plan, TargetFailure> {
    let schema = registry
        .database_config(target)
        .and_then(|db| db.effective_default_schema().map(str::to_owned))
        .unwrap_or_else(|| "public".to_owned());
    let mut checkout = registry
        .acquire(target, route)
        .await
        .map_err(|error| TargetFailure::new(FailureCode::Unavailable, error.to_string()))?;
    let result = async {
        let mut transaction =
            pgfleet_registry::begin_read_only(checkout.connection_mut(), EXPLAIN_TIMEOUT).await?;
        sqlx::query("SELECT set_config('search_path', quote_ident($1), true)")
            .bind(&schema)
            .execute(&mut *transaction)
            .await?;
        // The caller's one checked statement, as Execute runs it.
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(text.to_owned()))
            .persistent(false)
            .fetch_one(&mut *transaction)
            .await?;
        // Rolled back whatever ANALYZE did.
        transaction.rollback().await?;
        Ok::<_, sqlx::Error>(plan)
    }
    .await;
    match result {
        Ok(plan) => {
            let _ = pgfleet_registry::discard_session(checkout.connection_mut()).await;
            Ok(shape_of(plan))
        }
        Err(error) => {
            checkout.connection.close_on_drop();
            Err(TargetFailure::from_sqlx(&error))
        }
    }
}

/// The plan's JSON text, shape and cost.
fn shape_of(plan: Value) -> Plan {
    let root = plan
        .get(0)
        .and_then(|entry| entry.get("Plan"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut shape = Vec::new();
    walk(&root, 0, &mut shape);
    Plan {
        json: plan.to_string(),
        shape,
        total_cost: root.get("Total Cost").and_then(Value::as_f64).unwrap_or_default(),
    }
}

fn walk(node: &Value, depth: usize, shape: &mut Vec<String>) {
    let Some(kind) = node.get("Node Type").and_then(Value::as_str) else {
        return;
    };
    let text = |key: &str| node.get(key).and_then(Value::as_str);
    let mut line = format!("{}{kind}", "  ".repeat(depth));
    if let Some(index) = text("Index Name") {
        line.push_str(&format!(" using {index}"));
    }
    if let Some(relation) = text("Relation Name") {
        match text("Schema") {
            Some(schema) => line.push_str(&format!(" on {schema}.{relation}")),
            None => line.push_str(&format!(" on {relation}")),
        }
    }
    shape.push(line);
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            walk(child, depth + 1, shape);
        }
    }
}

/// Each copy whose shape differs from the first copy that answered, said
/// as the first node that differs on each side.
fn differences(plans: &[TargetPlan]) -> Vec<String> {
    let mut answered = plans
        .iter()
        .filter_map(|plan| plan.plan.as_ref().ok().map(|p| (&plan.target, p)));
    let Some((reference_target, reference)) = answered.next() else {
        return Vec::new();
    };
    answered
        .filter(|(_, plan)| plan.shape != reference.shape)
        .map(|(target, plan)| {
            let at = plan
                .shape
                .iter()
                .zip(&reference.shape)
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| plan.shape.len().min(reference.shape.len()));
            let node = |shape: &[String]| {
                shape
                    .get(at)
                    .map_or_else(|| "no node".to_owned(), |line| line.trim().to_owned())
            };
            format!(
                "{target}: {} where {reference_target} has {}",
                node(&plan.shape),
                node(&reference.shape)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_names_each_node_with_its_index_and_relation() {
        let plan = serde_json::json!([{"Plan": {"Node Type": "Limit", "Total Cost": 8.3, "Plans": [
            {"Node Type": "Index Scan", "Index Name": "accounts_email", "Relation Name": "accounts", "Schema": "public"}
        ]}}]);
        let plan = shape_of(plan);
        assert_eq!(
            plan.shape,
            vec!["Limit", "  Index Scan using accounts_email on public.accounts"]
        );
        assert!((plan.total_cost - 8.3).abs() < 1e-9);
    }

    #[test]
    fn differing_shapes_are_said_at_their_first_differing_node() {
        let plan = |cloud: &str, scan: &str| TargetPlan {
            target: Target::new(cloud, "app"),
            plan: Ok(Plan {
                json: String::new(),
                shape: vec![scan.to_owned()],
                total_cost: 0.0,
            }),
        };
        let plans = [
            plan("aws", "Index Scan using e on public.a"),
            plan("gcp", "Seq Scan on public.a"),
            plan("azure", "Index Scan using e on public.a"),
        ];
        assert_eq!(
            differences(&plans),
            vec!["gcp/app: Seq Scan on public.a where aws/app has Index Scan using e on public.a"]
        );
    }
}
