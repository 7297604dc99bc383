// The SQL editor: CodeMirror 6 with PostgreSQL highlighting, and the
// parse error of Validate underlined where libpg_query found it.
import { PostgreSQL, sql } from "@codemirror/lang-sql";
import { type Diagnostic, lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";

export interface SqlEditor {
  text(): string;
  setText(text: string): void;
  /** Underlines from the UTF-8 byte offset the server reported; none clears. */
  showError(error: { byteOffset: number; message: string } | null): void;
  focus(): void;
}

/** Character index of a UTF-8 byte offset in `text`. */
export function charIndexOfByte(text: string, byteOffset: number): number {
  const encoder = new TextEncoder();
  let bytes = 0;
  let index = 0;
  for (const char of text) {
    if (bytes >= byteOffset) break;
    bytes += encoder.encode(char).length;
    index += char.length;
  }
  return Math.min(index, text.length);
}

export function createEditor(
  parent: HTMLElement,
  initial: string,
  onRun: () => void,
): SqlEditor {
  const view = new EditorView({
    parent,
    doc: initial,
    extensions: [
      keymap.of([{ key: "Mod-Enter", run: () => (onRun(), true) }]),
      basicSetup,
      sql({ dialect: PostgreSQL }),
      lintGutter(),
      EditorView.contentAttributes.of({ "aria-label": "SQL text", "data-testid": "sql" }),
      // Editing makes an old error stale.
      EditorView.updateListener.of((update) => {
        if (update.docChanged) update.view.dispatch(setDiagnostics(update.state, []));
      }),
    ],
  });
  return {
    text: () => view.state.doc.toString(),
    setText: (text) =>
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } }),
    showError(error) {
      const diagnostics: Diagnostic[] = [];
      if (error) {
        const text = view.state.doc.toString();
        const from = charIndexOfByte(text, error.byteOffset);
        // The token at the error: up to the next space, or one character.
        const rest = text.slice(from).match(/^\S+/);
        const to = Math.min(text.length, from + Math.max(1, rest ? rest[0].length : 1));
        diagnostics.push({ from: Math.min(from, Math.max(0, text.length - 1)), to, severity: "error", message: error.message });
      }
      view.dispatch(setDiagnostics(view.state, diagnostics));
    },
    focus: () => view.focus(),
  };
}
