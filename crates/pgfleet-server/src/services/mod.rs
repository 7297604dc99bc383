//! The `pgfleet.v1` gRPC services, one module per service: each owns the
//! conversion between wire types and domain types at its boundary, so no
//! prost type leaks into the domain crates.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use crate::edge::ClientAddress;
use pgfleet_engine::identity::Identity;
use pgfleet_engine::query::audited::Origin;

mod auth;
mod backup;
mod convert;
mod fleet;
mod history;
mod insights;
mod migration;
mod query;
mod replication;
mod row_comparison;

pub use auth::AuthService;
pub use backup::BackupService;
pub use fleet::FleetService;
pub use history::HistoryService;
pub use insights::InsightsService;
pub use migration::MigrationService;
pub use query::QueryService;
pub use replication::ReplicationService;

/// Longest `x-request-id` kept as sent; longer or non-printable ids are
/// replaced by a generated one.
const MAX_REQUEST_ID_LEN: usize = 128;

/// True when a caller's `x-request-id` is kept as sent: printable ASCII
/// without spaces, 1 to 128 bytes.
pub(crate) fn acceptable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller's address (behind a trusted proxy, the one it forwarded) and
/// request id (`x-request-id`, or a new UUID). Behind [`crate::telemetry::rpc::RpcLayer`] the header always holds the
/// id the call's span carries.
fn origin<T>(request: &tonic::Request<T>) -> Origin {
    let request_id = request
        .metadata()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    Origin {
        client_address: ClientAddress::of(request)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        request_id,
    }
}

/// The identity the authentication layer attached to `request`.
///
/// Missing only if a method was routed around the layer, which is a bug;
/// failing closed with UNAUTHENTICATED keeps it harmless.
fn identity<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .ok_or_else(|| Status::unauthenticated("authentication required"))
}

/// The response stream of a server-streaming RPC.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
