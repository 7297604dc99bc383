// The console's clients: grpc-web to its own origin. The session is the
// HttpOnly cookie Login sets (same origin, so fetch sends it); the page never
// keeps the token.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/pgfleet/v1/auth_pb.js";
import { BackupService } from "./gen/pgfleet/v1/backup_pb.js";
import { FleetService } from "./gen/pgfleet/v1/fleet_pb.js";
import { HistoryService } from "./gen/pgfleet/v1/history_pb.js";
import { InsightsService } from "./gen/pgfleet/v1/insights_pb.js";
import { MigrationService } from "./gen/pgfleet/v1/migration_pb.js";
import { QueryService } from "./gen/pgfleet/v1/query_pb.js";
import { ReplicationService } from "./gen/pgfleet/v1/replication_pb.js";

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
});

export const auth = createClient(AuthService, transport);
export const backup = createClient(BackupService, transport);
export const fleet = createClient(FleetService, transport);
export const history = createClient(HistoryService, transport);
export const insights = createClient(InsightsService, transport);
export const migration = createClient(MigrationService, transport);
export const query = createClient(QueryService, transport);
export const replication = createClient(ReplicationService, transport);

/** "PERMISSION_DENIED: message", the gRPC code as grpcurl prints it. */
export function describeError(error: unknown): string {
  const e = ConnectError.from(error);
  const code = Code[e.code]
    .replace(/([a-z])([A-Z])/g, "$1_$2")
    .toUpperCase();
  return `${code}: ${e.rawMessage}`;
}

export function isUnauthenticated(error: unknown): boolean {
  return ConnectError.from(error).code === Code.Unauthenticated;
}

export function isCanceled(error: unknown): boolean {
  return ConnectError.from(error).code === Code.Canceled;
}
