// Result values as text, and results as CSV or JSON.
import type { Cell } from "./gen/pgfleet/v1/query_pb.js";

/** A cell as psql would show it; null stays null (shown as NULL). */
export function cellText(cell: Cell): string | null {
  const kind = cell.kind;
  switch (kind.case) {
    case "nullValue":
    case undefined:
      return null;
    case "boolValue":
      return kind.value ? "t" : "f";
    case "intValue":
    case "doubleValue":
      return String(kind.value);
    case "bytesValue":
      return "\\x" + Array.from(kind.value, (b) => b.toString(16).padStart(2, "0")).join("");
    default:
      return kind.value;
  }
}

/** One grid: a header and rows of text cells. */
export interface Grid {
  columns: string[];
  rows: (string | null)[][];
}

function csvField(value: string | null): string {
  if (value === null) return "";
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** RFC 4180 CSV: a header line, CRLF line ends, NULL as an empty field. */
export function toCsv(grid: Grid): string {
  return [grid.columns, ...grid.rows].map((row) => row.map(csvField).join(",")).join("\r\n") + "\r\n";
}

/** An array of objects, one per row, keyed by column name. */
export function toJson(grid: Grid): string {
  const objects = grid.rows.map((row) => Object.fromEntries(grid.columns.map((c, i) => [c, row[i]])));
  return JSON.stringify(objects, null, 2) + "\n";
}

/** Offers `text` as a file download. */
export function download(name: string, type: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
