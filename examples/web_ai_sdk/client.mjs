// The AI SDK's own client (the `ai` npm package, 6 or later) against rxagent.web.
//
// usage: node client.mjs <base url> <agent> [prompt]
//
// 1. Starts a run (POST /runs) and reads its UI message stream (GET /runs/{id}/ai-sdk)
//    with readUIMessageStream, every chunk checked against the SDK's own schema.
// 2. Runs useChat's engine (AbstractChat, what useChat wraps, with a minimal state and the
//    stock DefaultChatTransport) on POST /ai-sdk/chat: sends the prompt, approves every
//    call that waits with addToolApprovalResponse, and gets the rest of the answer.
// Prints one JSON object: the message of 1, and the chat's messages after 2.
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
  uiMessageChunkSchema,
} from "ai";
import { parseJsonEventStream } from "@ai-sdk/provider-utils";

const [base, agent, prompt = "Add 2 and 3, then pay Ana 5."] = process.argv.slice(2);

// Every chunk is validated against the SDK's own schema; a chunk that does not fit fails.
function chunks(body) {
  return parseJsonEventStream({ stream: body, schema: uiMessageChunkSchema }).pipeThrough(
    new TransformStream({
      transform(part, controller) {
        if (!part.success) throw part.error;
        controller.enqueue(part.value);
      },
    }),
  );
}

async function assemble(response) {
  let message;
  for await (const snapshot of readUIMessageStream({
    stream: chunks(response.body),
    terminateOnError: true,
  })) {
    message = snapshot;
  }
  return message;
}

// 1. A run started over rxagent's own route, read as a UI message stream.
const started = await fetch(`${base}/runs`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ agent, input: prompt }),
});
const { run_id } = await started.json();
const streamed = await fetch(`${base}/runs/${run_id}/ai-sdk`);
const header = streamed.headers.get("x-vercel-ai-ui-message-stream");
const paused = await assemble(streamed);

// 2. useChat's engine, unchanged: a prompt, then the approval of the waiting call.
class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) { this.messages = [...this.messages, message]; }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) { return structuredClone(thing); }
}

let finished;
const next = () => new Promise((resolve) => { finished = resolve; });
const chat = new (class extends AbstractChat {})({
  state: new State(),
  transport: new DefaultChatTransport({ api: `${base}/ai-sdk/chat`, body: { agent } }),
  sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
  onFinish: (event) => finished(event),
  onError: (error) => { console.error(String(error)); process.exit(3); },
});

let done = next();
await chat.sendMessage({ text: prompt });
const first = await done;
let last = first;
// Approve what waits (the approval of the last one sends the messages back by itself).
for (;;) {
  const waiting = chat.messages.at(-1).parts.filter((p) => p.state === "approval-requested");
  if (waiting.length === 0) break;
  done = next();
  for (const part of waiting) {
    await chat.addToolApprovalResponse({ id: part.approval.id, approved: true });
  }
  last = await done;
}
const second = last;

console.log(JSON.stringify({
  header,
  runId: run_id,
  paused,
  firstFinish: first.finishReason,
  secondFinish: second.finishReason,
  chat: chat.messages,
}));
