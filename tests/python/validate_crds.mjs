// Validates Kubernetes objects of CRD kinds against the CRD schemas that a
// registry package ships (@kubernetes-models/istio, @kubernetes-models/gateway-api).
// Usage: node validate_crds.mjs MODELS_DIR < objects.json (a JSON array).
// Prints one line per object: "ok KIND NAME" or "invalid KIND NAME: reason";
// an object of a kind no package knows is "unknown KIND". A part of an
// object (a type the package exports, as an experimental filter's config)
// is given as {apiVersion, kind, metadata: {name}, part: {...}}.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const models = process.argv[2];
const packages = {
  "security.istio.io": "@kubernetes-models/istio",
  "networking.istio.io": "@kubernetes-models/istio",
  "install.istio.io": "@kubernetes-models/istio",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const object of objects) {
  const [group, version] = object.apiVersion.split("/");
  const name = object.metadata?.name ?? "?";
  const pkg = packages[group];
  if (!pkg) {
    console.log(`unknown ${object.kind}`);
    failed = true;
    continue;
  }
  const file = `${models}/node_modules/${pkg}/${group}/${version}/${object.kind}.js`;
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[object.kind];
  } catch (error) {
    console.log(`unknown ${object.kind} (${error.message})`);
    failed = true;
    continue;
  }
  try {
    new Model(object.part ?? object).validate();
    console.log(`ok ${object.kind} ${name}`);
  } catch (error) {
    console.log(`invalid ${object.kind} ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
