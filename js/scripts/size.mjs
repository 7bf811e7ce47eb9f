// The SDK's size in a page: js/src/index.js bundled with esbuild (minified ESM, yjs external,
// @msgpack/msgpack included), raw and gzipped bytes.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const entry = fileURLToPath(new URL("../src/index.js", import.meta.url));
const result = await build({
  entryPoints: [entry], bundle: true, minify: true, format: "esm", platform: "browser",
  external: ["yjs"], write: false, target: "es2020", logLevel: "error",
});
const code = result.outputFiles[0].contents;
console.log(`minified: ${code.length} bytes`);
console.log(`gzipped:  ${gzipSync(code, { level: 9 }).length} bytes`);
