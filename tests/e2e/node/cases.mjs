// Runs named cases against a streamapi base URL and prints one JSON object:
// {"case name": {"ok": true, ...what the case returned} or {"ok": false, "error": {...}}}.
// A failing case is recorded, not thrown, so one defect never hides the others;
// tests/e2e/test_node_clients.py asserts on each case.

export const MODEL = "sim-small";
// A Claude-named model that no provider lists, so no client warns that it is retired.
export const CLAUDE_MODEL = "claude-sim";

/** The server's root URL, the script's one argument (e.g. http://127.0.0.1:8000). */
export function baseUrl() {
  const url = process.argv[2];
  if (!url) {
    console.error(`usage: node ${process.argv[1]} BASE_URL`);
    process.exit(2);
  }
  return url.replace(/\/+$/, "");
}

function describe(error) {
  return {
    name: error?.constructor?.name ?? typeof error,
    message: String(error?.message ?? error).slice(0, 500),
    status: error?.status ?? error?.statusCode ?? null,
  };
}

/** Run each case in turn (bounded: one pass) and print the results as JSON. */
export async function runCases(cases) {
  const results = {};
  for (const [name, run] of Object.entries(cases)) {
    try {
      results[name] = { ok: true, ...(await run()) };
    } catch (error) {
      results[name] = { ok: false, error: describe(error) };
    }
  }
  process.stdout.write(JSON.stringify(results) + "\n");
}

/** An error's class and status, for cases that expect the SDK to raise. */
export function caught(error) {
  return describe(error);
}
