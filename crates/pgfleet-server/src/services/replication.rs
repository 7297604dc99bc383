//! `pgfleet.v1.ReplicationService`: replication jobs, runs and status.

use pgfleet_proto::pgfleet::v1::{
    CreateJobRequest, CreateJobResponse, DeleteJobRequest, DeleteJobResponse, GetJobRequest, GetJobResponse,
    GetStatusRequest, GetStatusResponse, ListJobsRequest, ListJobsResponse, ReplicateTableRequest,
    ReplicateTableResponse, RunJobRequest, RunJobResponse, UpdateJobRequest, UpdateJobResponse,
    replication_service_server,
};
use tonic::{Request, Response, Status};

use super::{ResponseStream, not_implemented};

/// The issue that implements this service.
const ISSUE: u32 = 6;

/// Serves `pgfleet.v1.ReplicationService`.
#[derive(Debug, Default, Clone)]
pub struct ReplicationService;

#[tonic::async_trait]
impl replication_service_server::ReplicationService for ReplicationService {
    type RunJobStream = ResponseStream<RunJobResponse>;
    type ReplicateTableStream = ResponseStream<ReplicateTableResponse>;

    async fn create_job(
        &self,
        _request: Request<CreateJobRequest>,
    ) -> Result<Response<CreateJobResponse>, Status> {
        Err(not_implemented("ReplicationService/CreateJob", ISSUE))
    }

    async fn update_job(
        &self,
        _request: Request<UpdateJobRequest>,
    ) -> Result<Response<UpdateJobResponse>, Status> {
        Err(not_implemented("ReplicationService/UpdateJob", ISSUE))
    }

    async fn delete_job(
        &self,
        _request: Request<DeleteJobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        Err(not_implemented("ReplicationService/DeleteJob", ISSUE))
    }

    async fn get_job(&self, _request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        Err(not_implemented("ReplicationService/GetJob", ISSUE))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Err(not_implemented("ReplicationService/ListJobs", ISSUE))
    }

    async fn run_job(
        &self,
        _request: Request<RunJobRequest>,
    ) -> Result<Response<Self::RunJobStream>, Status> {
        Err(not_implemented("ReplicationService/RunJob", ISSUE))
    }

    async fn replicate_table(
        &self,
        _request: Request<ReplicateTableRequest>,
    ) -> Result<Response<Self::ReplicateTableStream>, Status> {
        Err(not_implemented("ReplicationService/ReplicateTable", ISSUE))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Err(not_implemented("ReplicationService/GetStatus", ISSUE))
    }
}
