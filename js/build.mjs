// Builds the demo page that `plait serve` serves at /demo/ (engine/http/_demo.py) into
// engine/demo/, from js/demo/ and the SDK in js/src/:
//
//   yjs.js           Yjs as one ES module (the page, the SDK and y-codemirror.next share it)
//   plait-client.js  the SDK with @msgpack/msgpack; imports "yjs"
//   demo.js          the page's code with CodeMirror and y-codemirror.next; imports "yjs" and
//                    "@plait/client"
//   index.html       js/demo/index.html, whose import map names the two files above
//   style.css        js/demo/style.css
//
// The output depends only on the sources and the pinned esbuild (package-lock.json), so the
// built files are committed and `node build.mjs --check` tells whether they are current: it
// builds into a temporary folder and exits 1 naming every file that differs.
//
// Usage: node js/build.mjs [--check]   (after `(cd js && npm ci)`)
import { build } from "esbuild";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const js = dirname(fileURLToPath(import.meta.url));
const committed = join(js, "..", "engine", "demo");

const common = {
  absWorkingDir: js, // the paths esbuild writes in comments are relative to it: the same on every machine
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
  write: true,
};

/** Build every file of the page into `out`. */
async function buildInto(out) {
  mkdirSync(out, { recursive: true });
  await build({ ...common, entryPoints: { yjs: "yjs" }, outdir: out });
  await build({ ...common, entryPoints: { "plait-client": "./src/index.js" }, outdir: out, external: ["yjs"] });
  await build({ ...common, entryPoints: { demo: "./demo/app.js" }, outdir: out, external: ["yjs", "@plait/client"] });
  for (const name of ["index.html", "style.css"]) copyFileSync(join(js, "demo", name), join(out, name));
}

/** The names of the files that are not the same in both folders (missing from either included). */
function differences(a, b) {
  const names = new Set([...readdirSync(a), ...readdirSync(b)]);
  const differ = [];
  for (const name of [...names].sort()) {
    let same = false;
    try {
      same = readFileSync(join(a, name)).equals(readFileSync(join(b, name)));
    } catch {
      same = false; // missing on one side
    }
    if (!same) differ.push(name);
  }
  return differ;
}

async function main() {
  const check = process.argv.includes("--check");
  if (!check) {
    rmSync(committed, { recursive: true, force: true });
    await buildInto(committed);
    console.log(`built ${readdirSync(committed).sort().join(", ")} in ${committed}`);
    return 0;
  }
  const temp = mkdtempSync(join(tmpdir(), "plait-demo-"));
  try {
    await buildInto(temp);
    mkdirSync(committed, { recursive: true });
    const differ = differences(committed, temp);
    if (differ.length) {
      console.error(`engine/demo/ is not what js/ builds: ${differ.join(", ")} differ; run node js/build.mjs and commit engine/demo/`);
      return 1;
    }
    console.log("engine/demo/ is up to date");
    return 0;
  } finally {
    rmSync(temp, { recursive: true, force: true });
  }
}

process.exitCode = await main();
