#!/usr/bin/env node
// Type-check Flux scripts with the Flux compiler front end (the WASM build of flux-lsp).
//
//   node check.mjs FILE...        check files
//   node check.mjs < items.json   check [{"name": ..., "source": ..., "declarations": {...}}]
//
// Prints one JSON object: {"valid": bool, "results": [{"name", "valid", "errors": [{"message",
// "line", "column", "endLine", "endColumn"}], "declared": [...]}]} (1-based lines and columns in
// the original source). Exit status: 0 when every script is valid, 1 when any is not, 2 on a
// usage or internal error.
//
// The verdict is `new Flux(src).is_valid()`, which parses the script and runs the semantic
// check (name resolution and type inference against the bundled standard library). is_valid()
// only answers true/false, so the messages come from the same compiler through the package's
// LSP server (textDocument/publishDiagnostics); a script is valid only when both agree.
//
// Names a script gets from outside are declared before checking, with sample values of the right
// type, inserted after the imports (line numbers in errors are mapped back):
// - query parameters, sent by influxdb-client as `extern` options with bare names, declared in
//   the script's header as `// params: _start: time, _vehicle_id: string` (types: time,
//   duration, string, int, float, bool, [T]);
// - Grafana's `v` record (v.timeRangeStart, v.timeRangeStop, v.windowPeriod, v.defaultBucket,
//   v.organization), when the script uses `v.` and does not define `v`;
// - "declarations": {"name": "type"} given with a stdin item.
import { readFileSync } from "node:fs";
import { register } from "node:module";

const SAMPLE_VALUES = {
  time: "2026-11-23T06:00:00Z",
  duration: "5m",
  string: '"sample"',
  int: "1",
  float: "1.0",
  bool: "true",
};
const GRAFANA_V =
  'v = {timeRangeStart: 2026-11-23T00:00:00Z, timeRangeStop: 2026-11-23T06:00:00Z, windowPeriod: 1m, ' +
  'defaultBucket: "telemetry", organization: "chargewatch"}';
const PARAMS_HEADER = /^\s*\/\/\s*params:(.*)$/gm;
const DIAGNOSTICS_TIMEOUT_MS = 10_000;

function sampleValue(type) {
  const list = /^\[(.+)\]$/.exec(type.trim());
  if (list) return `[${sampleValue(list[1])}]`;
  const value = SAMPLE_VALUES[type.trim()];
  if (value === undefined) {
    throw new Error(`unknown parameter type ${JSON.stringify(type)} (use ${Object.keys(SAMPLE_VALUES).join(", ")} or [T])`);
  }
  return value;
}

/** {name: type} declared by `// params:` header lines. */
function headerParams(source) {
  const declared = {};
  for (const match of source.matchAll(PARAMS_HEADER)) {
    for (const item of match[1].split(/,(?![^\[]*\])/)) {
      if (!item.trim()) continue;
      const parts = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$/.exec(item);
      if (!parts) throw new Error(`bad params header item ${JSON.stringify(item.trim())}: expected "name: type"`);
      declared[parts[1]] = parts[2];
    }
  }
  return declared;
}

/** The declaration lines to add to `source`, given the AST of the source. */
function declarationLines(source, ast, extra) {
  const declared = { ...headerParams(source), ...(extra || {}) };
  const lines = Object.entries(declared).map(([name, type]) => `${name} = ${sampleValue(type)}`);
  const assigned = new Set((ast.body || []).filter((s) => s.type === "VariableAssignment").map((s) => s.id.name));
  if (/(^|[^A-Za-z0-9_.])v\.[A-Za-z_]/.test(source) && !assigned.has("v") && !("v" in declared)) {
    lines.push(GRAFANA_V);
  }
  return lines;
}

/** Insert `lines` after the package clause and imports; returns the text and a line mapper. */
function withDeclarations(source, ast, lines) {
  if (lines.length === 0) return { text: source, originalLine: (line) => line };
  let after = 0; // 1-based line after which the declarations go
  for (const node of [ast.package, ...(ast.imports || [])]) {
    if (node && node.location) after = Math.max(after, node.location.end.line);
  }
  const sourceLines = source.split("\n");
  const text = [...sourceLines.slice(0, after), ...lines, ...sourceLines.slice(after)].join("\n");
  const originalLine = (line) => {
    if (line <= after) return line;
    if (line <= after + lines.length) return null; // inside the declarations
    return line - lines.length;
  };
  return { text, originalLine };
}

class DiagnosticsClient {
  constructor(flux) {
    this.lsp = new flux.Lsp();
    this.waiting = new Map();
    this.nextId = 1;
    this.lsp.onMessage((message) => this.receive(message));
    this.running = this.lsp.run();
    this.running.catch((err) => process.stderr.write(`fluxcheck: LSP server stopped: ${err}\n`));
  }

  receive(message) {
    let parsed;
    try {
      parsed = JSON.parse(message);
    } catch {
      return;
    }
    if (parsed.method === "textDocument/publishDiagnostics") {
      const resolve = this.waiting.get(parsed.params.uri);
      if (resolve) {
        this.waiting.delete(parsed.params.uri);
        resolve(parsed.params.diagnostics);
      }
    }
  }

  async request(method, params) {
    return this.lsp.send(JSON.stringify({ jsonrpc: "2.0", id: this.nextId++, method, params }));
  }

  async notify(method, params) {
    return this.lsp.send(JSON.stringify({ jsonrpc: "2.0", method, params }));
  }

  async initialize() {
    await this.request("initialize", { processId: null, rootUri: null, capabilities: {} });
    await this.notify("initialized", {});
  }

  /** Error-severity diagnostics for `text`, or null if the server sent none in time. */
  async diagnostics(uri, text) {
    const received = new Promise((resolve) => {
      this.waiting.set(uri, resolve);
      setTimeout(() => {
        if (this.waiting.delete(uri)) resolve(null);
      }, DIAGNOSTICS_TIMEOUT_MS);
    });
    await this.notify("textDocument/didOpen", { textDocument: { uri, languageId: "flux", version: 1, text } });
    const diagnostics = await received;
    await this.notify("textDocument/didClose", { textDocument: { uri } });
    return diagnostics;
  }
}

async function loadFlux() {
  // The package is a wasm-bindgen "bundler" build: see wasm-hooks.mjs for how node loads it.
  register("./wasm-hooks.mjs", import.meta.url);
  // The compiler logs through console.*; keep stdout for the JSON answer.
  for (const level of ["log", "info", "debug", "warn"]) console[level] = () => {};
  return import("@influxdata/flux-lsp-browser/flux-lsp-browser_bg.js");
}

async function checkOne(flux, client, item, index) {
  const { name, source } = item;
  const ast = flux.parse(source);
  const lines = declarationLines(source, ast, item.declarations);
  const { text, originalLine } = withDeclarations(source, ast, lines);
  const program = new flux.Flux(text);
  let compiles;
  try {
    compiles = program.is_valid();
  } finally {
    program.free();
  }
  const diagnostics = await client.diagnostics(`file:///fluxcheck/${index}/${encodeURIComponent(name)}`, text);
  const errors = (diagnostics || [])
    .filter((d) => d.severity === undefined || d.severity === 1)
    .map((d) => {
      const line = originalLine(d.range.start.line + 1);
      const endLine = originalLine(d.range.end.line + 1);
      return line === null
        ? { message: `in the declarations added for checking (${lines.join("; ")}): ${d.message}`, line: 0, column: 0,
            endLine: 0, endColumn: 0 }
        : { message: d.message, line, column: d.range.start.character + 1, endLine: endLine ?? line,
            endColumn: d.range.end.character + 1 };
    });
  if (!compiles && errors.length === 0) {
    errors.push({ message: "the Flux semantic check failed (the compiler gave no message)", line: 0, column: 0,
                  endLine: 0, endColumn: 0 });
  }
  if (compiles && diagnostics === null) {
    process.stderr.write(`fluxcheck: no diagnostics for ${name} within ${DIAGNOSTICS_TIMEOUT_MS} ms\n`);
  }
  return { name, valid: compiles && errors.length === 0, errors, declared: lines };
}

async function readItems(args) {
  if (args.length > 0) {
    return args.map((path) => ({ name: path, source: readFileSync(path, "utf8") }));
  }
  const input = readFileSync(0, "utf8");
  const items = JSON.parse(input);
  if (!Array.isArray(items) || items.some((i) => typeof i?.name !== "string" || typeof i?.source !== "string")) {
    throw new Error('stdin must be a JSON array of {"name": string, "source": string}');
  }
  return items;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.includes("-h") || args.includes("--help")) {
    process.stdout.write("usage: node check.mjs [FILE...]   (no files: JSON [{name, source}] on stdin)\n");
    return 0;
  }
  const items = await readItems(args);
  const flux = await loadFlux();
  const client = new DiagnosticsClient(flux);
  await client.initialize();
  const results = [];
  for (const [index, item] of items.entries()) {
    results.push(await checkOne(flux, client, item, index));
  }
  const valid = results.every((r) => r.valid);
  process.stdout.write(JSON.stringify({ valid, results }, null, 1) + "\n");
  return valid ? 0 : 1;
}

main().then(
  (status) => process.exit(status),
  (err) => {
    process.stderr.write(`fluxcheck: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  },
);
