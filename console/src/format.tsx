// Shared display of durations, times, sizes and targets for the read-mostly
// pages (backups, migrations, insights), so each shows them the same way.
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useState } from "preact/hooks";
import { describeError, fleet } from "./api.js";

/** `cloud/database`, the key the other pages and the tests use. */
export const where = (t: { cloud: string; database: string } | undefined) => (t ? `${t.cloud}/${t.database}` : "");

export function seconds(d: Duration | undefined): number {
  return d ? Number(d.seconds) + d.nanos / 1e9 : 0;
}

/** "850 ms", "12.3 s", "4 h 05 min": short enough for a table cell. */
export function duration(d: Duration | undefined): string {
  if (!d) return "";
  const s = seconds(d);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 120) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** UTC, to the second, like the history page. */
export function when(t: Timestamp | undefined): string {
  return t ? timestampDate(t).toISOString().replace("T", " ").slice(0, 19) : "";
}

export function bytes(n: bigint | number): string {
  const v = Number(n);
  if (v < 1024) return `${v} B`;
  if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
  if (v < 1024 ** 3) return `${(v / 1024 ** 2).toFixed(1)} MiB`;
  return `${(v / 1024 ** 3).toFixed(2)} GiB`;
}

/**
 * The fleet's database names (as configured, every cloud's) and the one
 * picked, first by default: the migrations and insights calls are per
 * database.
 */
export function useDatabase(onError: (message: string) => void) {
  const [databases, setDatabases] = useState<string[]>([]);
  const [database, setDatabase] = useState("");
  useEffect(() => {
    fleet
      .getConfiguration({})
      .then((config) => {
        const names = [...new Set(config.clouds.flatMap((c) => c.databases.map((d) => d.name)))];
        setDatabases(names);
        setDatabase((picked) => picked || (names[0] ?? ""));
      })
      .catch((e) => onError(describeError(e)));
  }, []);
  return { databases, database, setDatabase };
}

/** The database picker of those pages. */
export function DatabasePicker(props: { databases: string[]; database: string; onPick: (name: string) => void }) {
  return (
    <label>
      Database{" "}
      <select name="database" value={props.database} onChange={(e) => props.onPick(e.currentTarget.value)}>
        {props.databases.map((d) => (
          <option key={d} value={d}>
            {d}
          </option>
        ))}
      </select>
    </label>
  );
}
