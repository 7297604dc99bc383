// Migrations: where each copy of a database stands against its migration
// set (applied, pending, failed, drifted), and a schema drift check between
// the copies. Applying stays with the CLI and grpcurl: a rollout wants its
// plan read first, not a button.
import { useEffect, useState } from "preact/hooks";
import { describeError, migration } from "./api.js";
import {
  type CheckSchemaDriftResponse,
  type GetMigrationStatusResponse,
  MigrationSetSource,
  MigrationState,
  type MigrationVersionStatus,
  SchemaObjectKind,
} from "./gen/pgfleet/v1/migration_pb.js";
import { DatabasePicker, duration, useDatabase, when, where } from "./format.js";

const migrationState = (s: MigrationState) => MigrationState[s] ?? "";

function detail(m: MigrationVersionStatus): string {
  if (m.failure) {
    const pg = m.failure.postgres;
    const at = m.failure.line ? ` at line ${m.failure.line}, column ${m.failure.column}` : "";
    return `${pg ? `${pg.sqlstate}: ${pg.message}` : "failed"}${at}, ${when(m.failure.failedAt)} by ${m.failure.failedBy}`;
  }
  if (m.state === MigrationState.CHECKSUM_DRIFT) return `file ${m.fileChecksum.slice(0, 12)}… ≠ applied ${m.appliedChecksum.slice(0, 12)}…`;
  if (m.appliedAt) return `${when(m.appliedAt)} by ${m.appliedBy} in ${duration(m.duration)}`;
  return "";
}

export function MigrationsPage() {
  const [error, setError] = useState("");
  const { databases, database, setDatabase } = useDatabase(setError);
  const [status, setStatus] = useState<GetMigrationStatusResponse | null>(null);
  const [drift, setDrift] = useState<CheckSchemaDriftResponse | null>(null);
  const [checking, setChecking] = useState(false);

  async function load(name: string) {
    setStatus(null);
    setDrift(null);
    try {
      setStatus(await migration.getMigrationStatus({ scope: { database: name, selection: { case: "allClouds", value: {} } } }));
      setError("");
    } catch (e) {
      // A database without a migration set says so here; drift still works.
      setError(describeError(e));
    }
  }
  useEffect(() => {
    if (database) void load(database);
  }, [database]);

  async function checkDrift() {
    setChecking(true);
    try {
      setDrift(await migration.checkSchemaDrift({ scope: { database, selection: { case: "allClouds", value: {} } } }));
      setError("");
    } catch (e) {
      setError(describeError(e));
    } finally {
      setChecking(false);
    }
  }

  return (
    <section class="migrations" aria-label="Migrations">
      <div class="actions">
        <DatabasePicker databases={databases} database={database} onPick={setDatabase} />
        <button type="button" disabled={!database} onClick={() => void load(database)}>
          Refresh
        </button>
        <button type="button" disabled={!database || checking} onClick={() => void checkDrift()}>
          Check drift
        </button>
      </div>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}

      {status && (
        <>
          <p data-testid="migration-summary">
            {status.upToDate ? "Up to date" : "Not up to date"}: newest in the set {status.newestInSet.toString()} (
            {MigrationSetSource[status.source]?.toLowerCase() ?? ""}), newest applied {status.newestApplied.toString()}
            {status.behind.length > 0 && `; behind: ${status.behind.map(where).join(", ")}`}
            {status.needingAttention.length > 0 && `; needing attention: ${status.needingAttention.map(where).join(", ")}`}
          </p>
          {status.targets.map((t) => (
            <article
              key={where(t.target)}
              class={`target-status${t.needsAttention ? " attention" : ""}`}
              aria-label={`Migrations on ${where(t.target)}`}
              data-target={where(t.target)}
            >
              <h3>{where(t.target)}</h3>
              {t.error ? (
                <p class="error">{t.error.message}</p>
              ) : (
                <p data-testid="target-summary">
                  {t.tracked ? `newest applied ${t.newestApplied}` : "not tracked yet"}
                  {t.pending.length > 0 ? `; pending ${t.pending.join(", ")}` : "; nothing pending"}
                  {t.needsAttention && "; needs attention"}
                </p>
              )}
              {t.migrations.length > 0 && (
                <div class="grid">
                  <table>
                    <thead>
                      <tr>
                        <th scope="col">Version</th>
                        <th scope="col">Name</th>
                        <th scope="col">State</th>
                        <th scope="col">Detail</th>
                      </tr>
                    </thead>
                    <tbody>
                      {t.migrations.map((m) => (
                        <tr key={m.version.toString()} data-state={migrationState(m.state)} class={`state-${migrationState(m.state).toLowerCase()}`}>
                          <td>{m.version.toString()}</td>
                          <td>{m.name}</td>
                          <td>{migrationState(m.state)}</td>
                          <td>{detail(m)}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
              )}
            </article>
          ))}
        </>
      )}

      {drift && (
        <article class="drift" aria-label="Schema drift" data-testid="drift">
          <h2>Schema drift against {where(drift.reference)}</h2>
          <p role="status">{drift.drift ? "The copies differ." : "Every copy matches."}</p>
          {drift.targets.map((t) => (
            <div key={where(t.target)} data-target={where(t.target)}>
              <h3>{where(t.target)}</h3>
              {t.error && <p class="error">{t.error.message}</p>}
              {!t.error && t.differences.length === 0 && <p>Matches.</p>}
              {t.differences.length > 0 && (
                <div class="grid">
                  <table>
                    <thead>
                      <tr>
                        <th scope="col">Kind</th>
                        <th scope="col">Object</th>
                        <th scope="col">Aspect</th>
                        <th scope="col">On {where(drift.reference)}</th>
                        <th scope="col">On {where(t.target)}</th>
                        <th scope="col">Difference</th>
                      </tr>
                    </thead>
                    <tbody>
                      {t.differences.map((d, i) => (
                        <tr key={i} class="differs">
                          <td>{SchemaObjectKind[d.kind]?.toLowerCase() ?? ""}</td>
                          <td>{d.object}</td>
                          <td>{d.aspect}</td>
                          <td>{d.referenceValue}</td>
                          <td>{d.targetValue}</td>
                          <td>{d.description}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
              )}
            </div>
          ))}
        </article>
      )}
    </section>
  );
}
