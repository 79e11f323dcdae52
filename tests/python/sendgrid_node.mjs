// SendGrid's Node client (@sendgrid/client) against scopegate's REST API:
// create → list → get → put → patch → delete → scopes, an escalation and a
// read of the deleted key. Prints each step's status and body as JSON.
// Usage: node sendgrid_node.mjs NODE_MODULES_DIR BASE_URL API_KEY
import { createRequire } from "node:module";

const [dir, baseUrl, apiKey] = process.argv.slice(2);
const require = createRequire(`${dir}/package.json`);
const client = require("@sendgrid/client");
client.setApiKey(apiKey);
client.setDefaultRequest("baseUrl", baseUrl);

async function step(request) {
  try {
    const [response, body] = await client.request(request);
    return { status: response.statusCode, body: body === "" ? null : body };
  } catch (error) {
    if (!error.response) throw error;
    return { status: error.code, body: error.response.body };
  }
}

const steps = {};
steps.create = await step({ method: "POST", url: "/v3/api_keys", body: { name: "node-mail", scopes: ["mail.send"] } });
const id = steps.create.body.api_key_id;
steps.list = await step({ method: "GET", url: "/v3/api_keys", qs: { limit: 100 } });
steps.get = await step({ method: "GET", url: `/v3/api_keys/${id}` });
steps.put = await step({ method: "PUT", url: `/v3/api_keys/${id}`, body: { name: "node-stats", scopes: ["stats.read"] } });
steps.patch = await step({ method: "PATCH", url: `/v3/api_keys/${id}`, body: { name: "node-renamed" } });
steps.delete = await step({ method: "DELETE", url: `/v3/api_keys/${id}` });
steps.scopes = await step({ method: "GET", url: "/v3/scopes" });
steps.escalation = await step({ method: "POST", url: "/v3/api_keys", body: { name: "x", scopes: ["whitelabel.read"] } });
steps.gone = await step({ method: "GET", url: `/v3/api_keys/${id}` });
console.log(JSON.stringify(steps));
