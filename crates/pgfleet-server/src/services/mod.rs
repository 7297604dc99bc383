//! The `pgfleet.v1` gRPC services, one module per service: each owns the
//! conversion between wire types and domain types at its boundary, so no
//! prost type leaks into the domain crates.
//!
//! Until the issue that implements an RPC lands, the RPC answers
//! UNIMPLEMENTED through [`not_implemented`], never a fake response.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use crate::query::audited::Origin;

mod auth;
mod convert;
mod fleet;
mod history;
mod query;
mod replication;

pub use auth::AuthService;
pub use fleet::FleetService;
pub use history::HistoryService;
pub use query::QueryService;
pub use replication::ReplicationService;

/// Longest `x-request-id` kept as sent; longer or non-printable ids are
/// replaced by a generated one.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's address and request id (`x-request-id`, or a new UUID).
fn origin<T>(request: &tonic::Request<T>) -> Origin {
    let request_id = request
        .metadata()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    Origin {
        client_address: request.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
        request_id,
    }
}

/// The response stream of a server-streaming RPC.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The status of an RPC whose issue has not landed yet. `method` is
/// `Service/Rpc` as in the gRPC path, e.g. `"QueryService/Execute"`.
fn not_implemented(method: &str, issue: u32) -> Status {
    Status::unimplemented(format!(
        "pgfleet.v1.{method} is not implemented yet (issue #{issue})"
    ))
}

#[cfg(test)]
mod tests {
    use pgfleet_proto::pgfleet::v1 as pb;
    use pgfleet_proto::pgfleet::v1::replication_service_server::ReplicationService as _;
    use tonic::{Code, Request};

    use super::*;

    #[test]
    fn not_implemented_names_the_method_and_issue() {
        let status = not_implemented("QueryService/Execute", 4);
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "pgfleet.v1.QueryService/Execute is not implemented yet (issue #4)"
        );
    }

    #[tokio::test]
    async fn unary_and_streaming_rpcs_answer_unimplemented() {
        let unary = replication::unconnected()
            .get_status(Request::new(pb::GetStatusRequest::default()))
            .await
            .err()
            .map(|status| (status.code(), status.message().to_owned()));
        assert_eq!(
            unary,
            Some((
                Code::Unimplemented,
                "pgfleet.v1.ReplicationService/GetStatus is not implemented yet (issue #6)".to_owned()
            ))
        );

        let streaming = replication::unconnected()
            .run_job(Request::new(pb::RunJobRequest::default()))
            .await
            .err()
            .map(|status| status.code());
        assert_eq!(streaming, Some(Code::Unimplemented));
    }
}
