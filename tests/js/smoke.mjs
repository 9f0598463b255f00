// The official OpenAI JS SDK against a running gateway: non-stream, stream, tools, one error.
// Usage: BASE_URL=http://127.0.0.1:PORT/api/v1 API_KEY=zk-... node smoke.mjs  -> prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: process.env.API_KEY, baseURL: process.env.BASE_URL, maxRetries: 0 });
const out = {};

const r = await client.chat.completions.create({
  model: "zowy-1",
  messages: [{ role: "user", content: "Привет!" }],
});
out.nonStream = { content: r.choices[0].message.content, model: r.model, id: r.id, usage: r.usage };

const stream = await client.chat.completions.create({
  model: "zowy-1-pro",
  messages: [{ role: "user", content: "Tell a story" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
const models = new Set();
for await (const chunk of stream) {
  models.add(chunk.model);
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { content: text, models: [...models], usage };

const tools = await client.chat.completions.create({
  model: "zowy-1-pro",
  messages: [{ role: "user", content: "What time is it in Tashkent? call a tool" }],
  tools: [{
    type: "function",
    function: {
      name: "get_current_time",
      description: "Returns the current time for a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  }],
  tool_choice: "auto",
});
const call = tools.choices[0].message.tool_calls[0];
out.tools = { name: call.function.name, arguments: JSON.parse(call.function.arguments), finish: tools.choices[0].finish_reason };

try {
  const bad = new OpenAI({ apiKey: "zk-wrong", baseURL: process.env.BASE_URL, maxRetries: 0 });
  await bad.chat.completions.create({ model: "zowy-1", messages: [{ role: "user", content: "hi" }] });
  out.error = { raised: false };
} catch (err) {
  out.error = { raised: true, authentication: err instanceof OpenAI.AuthenticationError, status: err.status, code: err.code };
}

try {
  await client.chat.completions.create({ model: "zowy-1", messages: [{ role: "user", content: "hi" }], temperature: 5 });
  out.badRequest = { raised: false };
} catch (err) {
  out.badRequest = { raised: true, badRequest: err instanceof OpenAI.BadRequestError, param: err.param };
}

console.log(JSON.stringify(out));
