// run-dat-sheesh code runner, shared by run-ts (Deno) and run-js (Node.js).
// The manager copies it into a private run directory next to the caller's code (main.ts or
// main.mjs) and runs it; it defines the global `result`, runs the code, and on exit writes
// result.json beside itself: {"result"?: ..., "error"?: ...}. Values JSON cannot hold
// (BigInt, cycles, undefined, functions) are converted instead of crashing the run.
const isDeno = typeof Deno !== "undefined";
const runDir = new URL(".", import.meta.url);
const outcome = {};
let written = false;

function jsonSafe(value) {
  const ancestors = [];
  const walk = (v) => {
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "undefined" || typeof v === "function" || typeof v === "symbol") {
      return null;
    }
    if (v instanceof Error) return errorJson(v, ancestors);
    if (v === null || typeof v !== "object") {
      return typeof v === "number" && !Number.isFinite(v) ? String(v) : v;
    }
    if (ancestors.includes(v)) return "[Circular]";
    if (typeof v.toJSON === "function") return walk(v.toJSON());
    ancestors.push(v);
    try {
      if (Array.isArray(v)) return v.map(walk);
      if (v instanceof Map) return walk(Object.fromEntries(v));
      if (v instanceof Set) return walk([...v]);
      const out = {};
      for (const key of Object.keys(v)) out[key] = walk(v[key]);
      return out;
    } finally {
      ancestors.pop();
    }
  };
  return walk(value);
}

function errorJson(err, ancestors = []) {
  if (!(err instanceof Error)) return jsonSafe(err);
  const out = { name: err.name, message: err.message, stack: err.stack ?? "" };
  for (const key of Object.keys(err)) {
    if (!(key in out) && !ancestors.includes(err[key])) out[key] = jsonSafe(err[key]);
  }
  return out;
}

function fail(err) {
  outcome.error = err;
  if (isDeno) Deno.exitCode = 1;
  else process.exitCode = 1;
}

function writeOutcome() {
  if (written) return;
  written = true;
  const doc = {};
  if ("result" in outcome) doc.result = jsonSafe(outcome.result);
  if ("error" in outcome) doc.error = errorJson(outcome.error);
  const text = JSON.stringify(doc);
  const file = new URL("result.json", runDir);
  if (isDeno) Deno.writeTextFileSync(file, text);
  else globalThis.__rdsWriteFileSync(file, text);
}

Object.defineProperty(globalThis, "result", {
  value: Object.freeze({
    set(value) { outcome.result = value; },
    error(err) { fail(err); },
  }),
  writable: false,
  enumerable: false,
});

let entry;
if (isDeno) {
  entry = new URL("main.ts", runDir);
  globalThis.addEventListener("error", (event) => { event.preventDefault(); fail(event.error); });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    fail(event.reason);
  });
  globalThis.addEventListener("unload", writeOutcome);
} else {
  entry = new URL("main.mjs", runDir);
  const { writeFileSync } = await import("node:fs");
  const { createRequire } = await import("node:module");
  globalThis.__rdsWriteFileSync = writeFileSync;
  globalThis.require = createRequire(new URL("/workspace/", "file:///"));
  process.on("uncaughtException", fail);
  process.on("unhandledRejection", fail);
  process.on("exit", writeOutcome);
}

try {
  await import(entry.href);
} catch (err) {
  fail(err);
}
