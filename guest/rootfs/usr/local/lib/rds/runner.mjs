// run-dat-sheesh code runner, shared by run-ts (Deno) and run-js (Node.js).
//
// run-ts: Deno preloads this file (`deno run --preload=file:///usr/local/lib/rds/runner.mjs`,
// see run-ts), so `result` and the handlers below exist before the caller's program, Deno's
// main module, is even loaded; a throw at the top level arrives as an unhandled rejection.
// The program is /run/rds-deno/<stem>.ts (a file, or a warm Deno's fifo) or stdin with
// `deno run -`. The run's request {"token", "env", "args"} is read first from
// <stem>.request (stdin: <pid>.request); a warm Deno waits here, started before the run was
// known, so `env` is set and `args` become Deno.args / process.argv. The program's text is
// the caller's code alone, the same from run to run, so Deno's compile caches stay warm. A
// workspace file (`path`) is imported dynamically by that program.
//
// run-js: the manager runs it as the main module (`deno run ... runner.mjs ARGS` / `node runner.mjs
// ARGS`, so the caller's ARGS are Deno.args / process.argv.slice(2)) and writes to its stdin
// one JSON header line {"token", "ext", "path", "file"} followed by the caller's code. The
// runner defines the global `result`, writes the code to `file` (the manager names it
// /tmp/rds-code-<sha256>-main.<ext>; the runner computes that name when `file` is missing) or
// imports the workspace file at `path`, runs it, removes the temporary file, and at exit writes
// "\n<RS><token><json>\n" to stderr (RS: the record separator \x1e), where json is
// {"result"?: ..., "error"?: ...}. The manager
// takes the part after the last token off stderr. Values JSON cannot hold (BigInt, cycles,
// undefined, functions) are converted instead of crashing the run.
const isDeno = typeof Deno !== "undefined";
const outcome = {};
let finished = false;
let header = { token: "", ext: "mjs", path: null };
let codeFile = null;
// The run's token when preloaded by run-ts (see the top of this file).
let preludeToken = "";
if (isDeno && !import.meta.main) {
  const spool = "/run/rds-deno/";
  const main = decodeURIComponent(new URL(Deno.mainModule).pathname);
  const stem = main.startsWith(spool) && main.endsWith(".ts")
    ? main.slice(0, -3) : spool + Deno.pid;
  const request = JSON.parse(Deno.readTextFileSync(stem + ".request"));
  try { Deno.removeSync(stem + ".request"); } catch { /* a warm Deno's: removed after it */ }
  preludeToken = request.token ?? "";
  for (const [key, value] of Object.entries(request.env ?? {})) Deno.env.set(key, value);
  const args = Object.freeze([...(request.args ?? [])]);
  if (args.length !== Deno.args.length || args.some((arg, i) => arg !== Deno.args[i])) {
    Object.defineProperty(Deno, "args", { value: args, enumerable: true, configurable: true });
    globalThis.process?.argv.splice(2, Infinity, ...args);
  }
}

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

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function fail(err) {
  outcome.error = err;
  if (isDeno) Deno.exitCode = 1;
  else process.exitCode = 1;
}

let io;  // readStdin, writeFile, rename, exists, removeFile, writeStderr, sha256Hex

function finish() {
  if (finished) return;
  finished = true;
  // run-js's code file; run-ts's program files are the launcher's (outside the sandbox).
  if (codeFile) {
    try { io.removeFile(codeFile); } catch { /* already gone */ }
  }
  const doc = {};
  if ("result" in outcome) doc.result = jsonSafe(outcome.result);
  if ("error" in outcome) doc.error = errorJson(outcome.error);
  io.writeStderr("\n\x1e" + header.token + JSON.stringify(doc) + "\n");
}

Object.defineProperty(globalThis, "result", {
  value: Object.freeze({
    set(value) { outcome.result = value; },
    error(err) { fail(err); },
  }),
  writable: false,
  enumerable: false,
});

if (isDeno) {
  io = {
    // Synchronous reads: a web stream (new Response(Deno.stdin.readable)) costs ~100 ms more
    // on an emulated guest.
    readStdin: async () => {
      const chunks = [];
      let total = 0;
      const buffer = new Uint8Array(65536);
      for (;;) {
        const n = Deno.stdin.readSync(buffer);
        if (n === null) break;
        chunks.push(buffer.slice(0, n));
        total += n;
      }
      const all = new Uint8Array(total);
      let offset = 0;
      for (const chunk of chunks) { all.set(chunk, offset); offset += chunk.length; }
      return all;
    },
    writeFile: (path, bytes) => Deno.writeFileSync(path, bytes, { mode: 0o600 }),
    rename: (from, to) => Deno.renameSync(from, to),
    exists: (path) => { try { Deno.statSync(path); return true; } catch { return false; } },
    removeFile: (path) => Deno.removeSync(path),
    sha256Hex: async (bytes) => hex(await crypto.subtle.digest("SHA-256", bytes)),
    writeStderr: (text) => {
      const bytes = new TextEncoder().encode(text);
      let done = 0;
      while (done < bytes.length) done += Deno.stderr.writeSync(bytes.subarray(done));
    },
  };
  globalThis.addEventListener("error", (event) => { event.preventDefault(); fail(event.error); });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    fail(event.reason);
  });
  globalThis.addEventListener("unload", finish);
  // Once nothing is left to run (the unload event) Deno would still tear the runtime down
  // gracefully: ~0.4 s under emulation. Exit instead, with the exit code as it stands, after
  // the unload listeners the program added while it loaded (this one is added after them).
  globalThis.addEventListener("load", () => {
    globalThis.addEventListener("unload", () => Deno.exit());
  });
} else {
  const fs = await import("node:fs");
  const { createRequire } = await import("node:module");
  const { createHash } = await import("node:crypto");
  io = {
    // Synchronous reads: a web stream (new Response(Deno.stdin.readable)) costs ~100 ms more
    // on an emulated guest.
    readStdin: async () => {
      const chunks = [];
      for await (const chunk of process.stdin) chunks.push(chunk);
      return new Uint8Array(Buffer.concat(chunks));
    },
    writeFile: (path, bytes) => fs.writeFileSync(path, bytes, { mode: 0o600 }),
    rename: (from, to) => fs.renameSync(from, to),
    exists: (path) => fs.existsSync(path),
    removeFile: (path) => fs.rmSync(path, { force: true }),
    sha256Hex: async (bytes) => createHash("sha256").update(bytes).digest("hex"),
    writeStderr: (text) => fs.writeSync(2, text),
  };
  globalThis.require = createRequire("file:///workspace/");
  process.on("uncaughtException", fail);
  process.on("unhandledRejection", fail);
  process.on("exit", finish);
}

if (preludeToken) {
  header.token = preludeToken;
} else {
  const input = await io.readStdin();
  const newline = input.indexOf(10);
  header = JSON.parse(new TextDecoder().decode(input.subarray(0, newline)));
  const code = input.subarray(newline + 1);

  // The code file is named after its content, so running the same code again finds Deno's
  // compile cache warm. It is written atomically (temp name + rename) and removed at exit; a
  // concurrent run of the same code that finds it removed before its import writes it again.
  async function writeCodeFile() {
    const path = header.file ?? `/tmp/rds-code-${await io.sha256Hex(code)}-main.${header.ext}`;
    const temp = `${path}.${header.token}`;
    io.writeFile(temp, code);
    io.rename(temp, path);
    return path;
  }

  let entry;
  if (header.path) {
    entry = new URL("file://" + header.path).href;
  } else {
    codeFile = await writeCodeFile();
    entry = new URL("file://" + codeFile).href;
  }

  for (let attempt = 1; ; attempt++) {
    try {
      await import(entry);
      break;
    } catch (err) {
      const vanished = codeFile && attempt < 3 && String(err?.message ?? "").includes(codeFile) &&
        !io.exists(codeFile);
      if (!vanished) {
        fail(err);
        break;
      }
      codeFile = await writeCodeFile();
    }
  }
}
