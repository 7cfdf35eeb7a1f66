// The AI SDK's own client (the `ai` npm package) against rxagent.web.
//
// usage: node ai_client.mjs <base url> <agent>
// Prints one JSON object: what readUIMessageStream assembled from a run's UI message
// stream, and the messages of a chat (the engine of useChat, with a minimal state)
// that sends a prompt, approves the call that waits, and gets the rest of the answer.
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
  uiMessageChunkSchema,
} from "ai";
import { parseJsonEventStream } from "@ai-sdk/provider-utils";

const [base, agent] = process.argv.slice(2);

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
  body: JSON.stringify({ agent, input: "Add 2 and 3, then pay Ana 5." }),
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
await chat.sendMessage({ text: "Add 2 and 3, then pay Ana 5." });
const first = await done;
const waiting = chat.messages.at(-1).parts.find((p) => p.state === "approval-requested");
done = next();
await chat.addToolApprovalResponse({ id: waiting.approval.id, approved: true });
const second = await done;

console.log(JSON.stringify({
  header,
  runId: run_id,
  paused,
  firstFinish: first.finishReason,
  secondFinish: second.finishReason,
  chat: chat.messages,
}));
