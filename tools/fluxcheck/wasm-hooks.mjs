// Node module hooks: let plain node load @influxdata/flux-lsp-browser, a wasm-bindgen "bundler"
// build. Its JS is ESM in a package without "type": "module", and flux-lsp-browser_bg.js does
// `import * as wasm from './flux-lsp-browser_bg.wasm'`, which node cannot import. We serve that
// specifier as a small ES module that compiles the .wasm and instantiates it with
// `WebAssembly.instantiate`, passing flux-lsp-browser_bg.js's own exports as the import object
// (the cycle is safe: the wasm imports only function declarations, which ES modules hoist).
import { readFile } from "node:fs/promises";

const PACKAGE_DIR = "/@influxdata/flux-lsp-browser/";

export async function load(url, context, nextLoad) {
  if (!url.startsWith("file:") || !url.includes(PACKAGE_DIR)) {
    return nextLoad(url, context);
  }
  if (url.endsWith(".js")) {
    return { format: "module", source: await readFile(new URL(url), "utf8"), shortCircuit: true };
  }
  if (url.endsWith("_bg.wasm")) {
    const module = await WebAssembly.compile(await readFile(new URL(url)));
    const importNames = [...new Set(WebAssembly.Module.imports(module).map((i) => i.module))];
    const exportNames = WebAssembly.Module.exports(module).map((e) => e.name);
    const lines = importNames.map((name, i) => `import * as imports${i} from ${JSON.stringify(name)};`);
    lines.push(
      'import { readFile } from "node:fs/promises";',
      `const bytes = await readFile(new URL(${JSON.stringify(url)}));`,
      `const { instance } = await WebAssembly.instantiate(bytes, {${importNames
        .map((name, i) => `${JSON.stringify(name)}: imports${i}`)
        .join(", ")}});`,
      ...exportNames.map((name) => `export const ${name} = instance.exports[${JSON.stringify(name)}];`),
    );
    return { format: "module", source: lines.join("\n"), shortCircuit: true };
  }
  return nextLoad(url, context);
}
