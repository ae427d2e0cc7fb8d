// The `@anthropic-ai/sdk` npm package against streamapi's Messages API: a
// stream and a create, count_tokens, and tool use (whole and streamed).
import Anthropic from "@anthropic-ai/sdk";
import { CLAUDE_MODEL, baseUrl, caught, runCases } from "./cases.mjs";

// The SDK appends /v1/messages itself.
const client = new Anthropic({ baseURL: baseUrl(), apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Say something about rivers." }];
const weatherTool = {
  name: "get_weather",
  description: "The current weather in a city.",
  input_schema: {
    type: "object",
    properties: { location: { type: "string" } },
    required: ["location"],
  },
};
const weatherQuestion = [{ role: "user", content: "What is the weather in Paris?" }];

function toolUses(message) {
  return message.content
    .filter((block) => block.type === "tool_use")
    .map((block) => ({ id: block.id, name: block.name, input: block.input }));
}

await runCases({
  async messages_stream() {
    const stream = client.messages.stream({ model: CLAUDE_MODEL, max_tokens: 64, messages });
    let text = "";
    stream.on("text", (delta) => {
      text += delta;
    });
    const final = await stream.finalMessage();
    return {
      text,
      final_text: final.content.map((block) => block.text ?? "").join(""),
      stop_reason: final.stop_reason,
      usage: final.usage,
    };
  },

  async messages_create() {
    const message = await client.messages.create({ model: CLAUDE_MODEL, max_tokens: 64, messages });
    return {
      type: message.type,
      role: message.role,
      text: message.content.map((block) => block.text ?? "").join(""),
      stop_reason: message.stop_reason,
      usage: message.usage,
    };
  },

  async count_tokens() {
    const counted = await client.messages.countTokens({ model: CLAUDE_MODEL, messages });
    // The same prompt's usage, to compare with the count.
    const message = await client.messages.create({ model: CLAUDE_MODEL, max_tokens: 1, messages });
    return { input_tokens: counted.input_tokens, usage_input_tokens: message.usage.input_tokens };
  },

  async tool_use() {
    const message = await client.messages.create({
      model: CLAUDE_MODEL,
      max_tokens: 256,
      messages: weatherQuestion,
      tools: [weatherTool],
    });
    return { stop_reason: message.stop_reason, tool_uses: toolUses(message) };
  },

  async tool_use_stream() {
    const stream = client.messages.stream({
      model: CLAUDE_MODEL,
      max_tokens: 256,
      messages: weatherQuestion,
      tools: [weatherTool],
      tool_choice: { type: "any" },
    });
    const final = await stream.finalMessage();
    return { stop_reason: final.stop_reason, tool_uses: toolUses(final) };
  },

  async tool_result_turn() {
    const first = await client.messages.create({
      model: CLAUDE_MODEL,
      max_tokens: 256,
      messages: weatherQuestion,
      tools: [weatherTool],
    });
    const call = first.content.find((block) => block.type === "tool_use");
    const answer = await client.messages.create({
      model: CLAUDE_MODEL,
      max_tokens: 256,
      tools: [weatherTool],
      messages: [
        ...weatherQuestion,
        { role: "assistant", content: first.content },
        {
          role: "user",
          content: [{ type: "tool_result", tool_use_id: call.id, content: "Sunny, 21 °C" }],
        },
      ],
    });
    return {
      stop_reason: answer.stop_reason,
      text: answer.content.map((block) => block.text ?? "").join(""),
    };
  },

  async bad_request_error() {
    try {
      await client.messages.create({ model: CLAUDE_MODEL, max_tokens: 16, messages: "not a list" });
    } catch (error) {
      return {
        is_bad_request_error: error instanceof Anthropic.BadRequestError,
        type: error.error?.error?.type ?? null,
        ...caught(error),
      };
    }
    throw new Error("a malformed request did not raise");
  },
});
