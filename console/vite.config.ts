// Builds the console into dist/, which pgfleet embeds and serves at `/` of
// server.console_addr (crates/pgfleet-server/src/console.rs).
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The console's CSP allows no inline scripts, and assets stay files.
    assetsInlineLimit: 0,
    // Debuggable in the browser without shipping the sources elsewhere.
    sourcemap: false,
    chunkSizeWarningLimit: 1500,
  },
  // `npm run dev` against a local pgfleet: proxy calls to its console port.
  server: {
    proxy: {
      "^/pgfleet\\.v1\\..*": { target: process.env.PGFLEET_CONSOLE ?? "http://127.0.0.1:8080" },
    },
  },
});
