// The official OpenAI JS SDK on recorded provider traffic replayed through the gateway.
// Usage: BASE_URL=... API_KEY=... REPLAY_URL=... node conformance.mjs < scenarios.json -> one JSON line.
// Each scenario queues its recorded answers at the replay upstream, then drives one SDK helper.
import OpenAI from "openai";
import { readFileSync } from "node:fs";

const client = new OpenAI({ apiKey: process.env.API_KEY, baseURL: process.env.BASE_URL, maxRetries: 0 });
const scenarios = JSON.parse(readFileSync(0, "utf8"));

async function queue(answers) {
  for (const answer of answers) {
    const r = await fetch(`${process.env.REPLAY_URL}/_replay/queue`, { method: "POST", body: JSON.stringify(answer) });
    if (!r.ok) throw new Error(`queue failed: ${r.status}`);
  }
}

const calls = (message) => (message.tool_calls ?? []).map((c) => [c.id, c.function.name, c.function.arguments]);

async function iterate(s) {
  const stream = await client.chat.completions.create({ ...s.request, stream: true, stream_options: { include_usage: true } });
  let content = "";
  let usage = null;
  const ids = new Set();
  const indexes = [];
  for await (const chunk of stream) {
    ids.add(chunk.id);
    for (const choice of chunk.choices) {
      content += choice.delta.content ?? "";
      for (const call of choice.delta.tool_calls ?? []) indexes.push(call.index);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { content, usage, ids: [...ids], indexes };
}

async function helper(s) {
  const stream = client.chat.completions.stream(s.request);
  const final = await stream.finalChatCompletion();
  const message = final.choices[0].message;
  return { content: message.content ?? "", calls: calls(message), id: final.id, model: final.model };
}

async function runTools(s) {
  const seen = [];
  const tools = s.tools.map((tool) => ({
    type: "function",
    function: {
      name: tool.function.name,
      parameters: tool.function.parameters ?? { type: "object", properties: {} },
      parse: JSON.parse,
      function: (args) => { seen.push(args); return "done"; },
    },
  }));
  const runner = client.chat.completions.runTools({ ...s.request, tools });
  const content = await runner.finalContent();
  const messages = runner.messages.map((m) => ({ role: m.role, tool_call_id: m.tool_call_id, calls: m.tool_calls ? calls(m) : undefined }));
  return { content, seen, messages };
}

const kinds = { iterate, helper, runTools };
const out = {};
for (const s of scenarios) {
  await queue(s.answers);
  try {
    out[s.name] = { ok: true, ...(await kinds[s.kind](s)) };
  } catch (error) {
    out[s.name] = { ok: false, error: String(error) };
  }
}
console.log(JSON.stringify(out));
