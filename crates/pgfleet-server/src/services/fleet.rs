//! `pgfleet.v1.FleetService`: configuration, health and catalog introspection.

use pgfleet_proto::pgfleet::v1::{
    GetConfigurationRequest, GetConfigurationResponse, GetHealthRequest, GetHealthResponse,
    ListSchemasRequest, ListSchemasResponse, ListTablesRequest, ListTablesResponse, fleet_service_server,
};
use std::sync::Arc;

use pgfleet_config::FleetConfig;
use pgfleet_registry::Registry;
use tonic::{Request, Response, Status};

use super::not_implemented;

/// The issue that implements this service.
const ISSUE: u32 = 4;

/// Serves `pgfleet.v1.FleetService`.
#[derive(Clone)]
pub struct FleetService {
    #[allow(dead_code)] // used as the RPCs land (issue #4)
    registry: Arc<Registry>,
    #[allow(dead_code)]
    config: Arc<FleetConfig>,
}

impl FleetService {
    pub fn new(registry: Arc<Registry>, config: Arc<FleetConfig>) -> Self {
        Self { registry, config }
    }
}

#[tonic::async_trait]
impl fleet_service_server::FleetService for FleetService {
    async fn get_configuration(
        &self,
        _request: Request<GetConfigurationRequest>,
    ) -> Result<Response<GetConfigurationResponse>, Status> {
        Err(not_implemented("FleetService/GetConfiguration", ISSUE))
    }

    async fn get_health(
        &self,
        _request: Request<GetHealthRequest>,
    ) -> Result<Response<GetHealthResponse>, Status> {
        Err(not_implemented("FleetService/GetHealth", ISSUE))
    }

    async fn list_schemas(
        &self,
        _request: Request<ListSchemasRequest>,
    ) -> Result<Response<ListSchemasResponse>, Status> {
        Err(not_implemented("FleetService/ListSchemas", ISSUE))
    }

    async fn list_tables(
        &self,
        _request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        Err(not_implemented("FleetService/ListTables", ISSUE))
    }
}
