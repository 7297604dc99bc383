//! `pgfleet.v1.QueryService`: fan-out SQL execution and validation.

use pgfleet_proto::pgfleet::v1::{
    ExecuteRequest, ExecuteResponse, ExecuteStreamRequest, ExecuteStreamResponse, ValidateRequest,
    ValidateResponse, query_service_server,
};
use tonic::{Request, Response, Status};

use super::{ResponseStream, not_implemented};

/// The issue that implements this service.
const ISSUE: u32 = 4;

/// Serves `pgfleet.v1.QueryService`.
#[derive(Debug, Default, Clone)]
pub struct QueryService;

#[tonic::async_trait]
impl query_service_server::QueryService for QueryService {
    type ExecuteStreamStream = ResponseStream<ExecuteStreamResponse>;

    async fn execute(&self, _request: Request<ExecuteRequest>) -> Result<Response<ExecuteResponse>, Status> {
        Err(not_implemented("QueryService/Execute", ISSUE))
    }

    async fn execute_stream(
        &self,
        _request: Request<ExecuteStreamRequest>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        Err(not_implemented("QueryService/ExecuteStream", ISSUE))
    }

    async fn validate(
        &self,
        _request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        Err(not_implemented("QueryService/Validate", ISSUE))
    }
}
