//! `pgfleet.v1.HistoryService`: reading the audit trail.

use pgfleet_proto::pgfleet::v1::{
    ExportExecutionsRequest, ExportExecutionsResponse, GetExecutionRequest, GetExecutionResponse,
    ListExecutionsRequest, ListExecutionsResponse, VerifyChainRequest, VerifyChainResponse,
    history_service_server,
};
use tonic::{Request, Response, Status};

use super::{ResponseStream, not_implemented};

/// The issue that implements this service.
const ISSUE: u32 = 5;

/// Serves `pgfleet.v1.HistoryService`.
#[derive(Debug, Default, Clone)]
pub struct HistoryService;

#[tonic::async_trait]
impl history_service_server::HistoryService for HistoryService {
    type ExportExecutionsStream = ResponseStream<ExportExecutionsResponse>;

    async fn list_executions(
        &self,
        _request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        Err(not_implemented("HistoryService/ListExecutions", ISSUE))
    }

    async fn get_execution(
        &self,
        _request: Request<GetExecutionRequest>,
    ) -> Result<Response<GetExecutionResponse>, Status> {
        Err(not_implemented("HistoryService/GetExecution", ISSUE))
    }

    async fn export_executions(
        &self,
        _request: Request<ExportExecutionsRequest>,
    ) -> Result<Response<Self::ExportExecutionsStream>, Status> {
        Err(not_implemented("HistoryService/ExportExecutions", ISSUE))
    }

    async fn verify_chain(
        &self,
        _request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        Err(not_implemented("HistoryService/VerifyChain", ISSUE))
    }
}
