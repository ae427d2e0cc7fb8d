// The `openai` npm package against streamapi: chat (streamed and whole, a
// streamed tool call), a Responses stream, and an error raised as the SDK's class.
import OpenAI from "openai";
import { MODEL, baseUrl, caught, runCases } from "./cases.mjs";

const client = new OpenAI({ baseURL: `${baseUrl()}/v1`, apiKey: "unused", maxRetries: 0 });
const question = [{ role: "user", content: "Say something about rivers." }];
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city.",
    parameters: {
      type: "object",
      properties: { location: { type: "string" } },
      required: ["location"],
    },
  },
};

await runCases({
  async chat_stream() {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: question,
      max_tokens: 40,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let chunks = 0;
    let finishReason = null;
    let usage = null;
    for await (const chunk of stream) {
      chunks += 1;
      const choice = chunk.choices[0];
      text += choice?.delta?.content ?? "";
      finishReason = choice?.finish_reason ?? finishReason;
      usage = chunk.usage ?? usage;
    }
    return { text, chunks, finish_reason: finishReason, usage };
  },

  async chat_create() {
    const completion = await client.chat.completions.create({
      model: MODEL,
      messages: question,
      max_tokens: 40,
    });
    const choice = completion.choices[0];
    return {
      object: completion.object,
      text: choice.message.content,
      finish_reason: choice.finish_reason,
      usage: completion.usage,
    };
  },

  async chat_tool_stream() {
    // The stream helper reassembles the call from its deltas, as applications read it.
    const stream = client.chat.completions.stream({
      model: MODEL,
      messages: [{ role: "user", content: "What is the weather in Paris?" }],
      tools: [weatherTool],
    });
    const firstDeltas = [];
    for await (const chunk of stream) {
      if (firstDeltas.length < 2 && chunk.choices[0]) firstDeltas.push(chunk.choices[0].delta);
    }
    const final = await stream.finalChatCompletion();
    const choice = final.choices[0];
    return {
      first_deltas: firstDeltas,
      finish_reason: choice.finish_reason,
      content: choice.message.content,
      tool_calls: (choice.message.tool_calls ?? []).map((call) => ({
        id: call.id,
        name: call.function.name,
        arguments: JSON.parse(call.function.arguments),
      })),
    };
  },

  async responses_stream() {
    // No max_output_tokens: a truncated answer ends in response.incomplete, and the
    // SDK's finalResponse() only takes a response.completed.
    const stream = client.responses.stream({ model: MODEL, input: "Say something about rivers." });
    const types = new Set();
    let text = "";
    for await (const event of stream) {
      types.add(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
    }
    const final = await stream.finalResponse();
    // The stream's finalResponse() has no output_text helper (only responses.create's has).
    const finalText = final.output
      .filter((item) => item.type === "message")
      .flatMap((item) => item.content.filter((part) => part.type === "output_text"))
      .map((part) => part.text)
      .join("");
    return {
      event_types: [...types],
      text,
      final_text: finalText,
      status: final.status,
      usage: final.usage,
    };
  },

  async responses_create() {
    const response = await client.responses.create({
      model: MODEL,
      input: "Say something about rivers.",
      max_output_tokens: 40,
    });
    return { status: response.status, output_text: response.output_text, usage: response.usage };
  },

  async bad_request_error() {
    try {
      await client.chat.completions.create({ model: MODEL, messages: "not a list" });
    } catch (error) {
      return {
        is_bad_request_error: error instanceof OpenAI.BadRequestError,
        is_api_error: error instanceof OpenAI.APIError,
        type: error.type ?? null,
        param: error.param ?? null,
        ...caught(error),
      };
    }
    throw new Error("a malformed request did not raise");
  },

  async not_found_error() {
    try {
      await client.responses.retrieve("resp_never_created");
    } catch (error) {
      return { is_not_found_error: error instanceof OpenAI.NotFoundError, ...caught(error) };
    }
    throw new Error("retrieving a response never created did not raise");
  },
});
