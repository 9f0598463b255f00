// The official OpenAI JS SDK's Responses API against a running gateway: create, stream (raw and the
// helper), a function-tool loop, a previous_response_id chain, retrieve / input items / delete, errors.
// Usage: BASE_URL=http://127.0.0.1:PORT/v1 API_KEY=zk-... node responses.mjs  -> prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: process.env.API_KEY, baseURL: process.env.BASE_URL, maxRetries: 0 });
const out = {};

const r = await client.responses.create({ model: "zowy-1", instructions: "Be brief.", input: "Привет!" });
out.create = { text: r.output_text, id: r.id, model: r.model, status: r.status, total: r.usage.total_tokens };

const raw = await client.responses.create({ model: "zowy-1-pro", input: "Tell a story", stream: true });
const kinds = [];
let text = "";
for await (const event of raw) {
  kinds.push(event.type);
  if (event.type === "response.output_text.delta") text += event.delta;
}
out.stream = { text, first: kinds.slice(0, 2), last: kinds[kinds.length - 1] };

const helper = client.responses.stream({ model: "zowy-1", input: "Stream again" });
let helperText = "";
helper.on("response.output_text.delta", (event) => { helperText += event.delta; });
const final = await helper.finalResponse();
out.helper = { deltas: helperText, final: final.output_text };

const tools = [{
  type: "function", name: "get_weather", description: "The weather in a city", strict: true,
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false },
}];
const first = await client.responses.create({ model: "zowy-1", input: "Weather in Tashkent? call a tool", tools });
const call = first.output.find((item) => item.type === "function_call");
const follow = await client.responses.create({
  model: "zowy-1", tools, previous_response_id: first.id,
  input: [{ type: "function_call_output", call_id: call.call_id, output: "Sunny" }],
});
out.tools = { name: call.name, arguments: JSON.parse(call.arguments), follow: follow.output_text,
              kinds: first.output.map((item) => item.type) };

const got = await client.responses.retrieve(r.id);
const items = await client.responses.inputItems.list(r.id, { order: "asc" });
await client.responses.delete(r.id);
let gone = null;
try { await client.responses.retrieve(r.id); } catch (err) { gone = err.status; }
out.stored = { same: got.id === r.id && got.output_text === r.output_text, items: items.data.length, gone };

try {
  await client.responses.create({ model: "zowy-1", input: [{ role: "user", content: [{ type: "bogus" }] }] });
  out.badRequest = { raised: false };
} catch (err) {
  out.badRequest = { raised: true, status: err.status, param: err.param };
}
console.log(JSON.stringify(out));
