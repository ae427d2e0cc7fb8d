// The Vercel AI SDK (`ai`) against streamapi with each provider a user would
// pick: OpenAI-compatible (chat), OpenAI (Responses, and chat), Anthropic
// (Messages). For each: streamText and generateText, a tool call with a zod
// schema (streamed, and a tool loop), and generateObject.
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { APICallError, generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";
import { CLAUDE_MODEL, MODEL, baseUrl, runCases } from "./cases.mjs";

const v1 = `${baseUrl()}/v1`;
const openai = createOpenAI({ baseURL: v1, apiKey: "unused" });
const providers = {
  // supportsStructuredOutputs: generateObject then sends the schema (json_schema);
  // without it the provider sends json_object and the schema reaches nobody.
  openai_compatible: createOpenAICompatible({
    name: "streamapi",
    baseURL: v1,
    apiKey: "unused",
    includeUsage: true,
    supportsStructuredOutputs: true,
  })(MODEL),
  openai_responses: openai.responses(MODEL),
  openai_chat: openai.chat(MODEL),
  anthropic: createAnthropic({ baseURL: v1, apiKey: "unused" })(CLAUDE_MODEL),
};

const prompt = "Say something about rivers.";
const weatherQuestion = "What is the weather in Paris?";
const weatherInput = z.object({ location: z.string().describe("a city") });
const cityFacts = z.object({
  city: z.string(),
  population: z.number().int(),
  rivers: z.array(z.string()),
});

function weatherTool(execute) {
  return tool({ description: "The current weather in a city.", inputSchema: weatherInput, execute });
}

/** The stream's part types in order (repeats collapsed), its text, and its tool calls. */
async function readFullStream(result) {
  const types = [];
  let text = "";
  const textPartsBeforeToolCall = [];
  let sawToolCall = false;
  for await (const part of result.fullStream) {
    if (types.at(-1) !== part.type) types.push(part.type);
    if (part.type === "error") throw part.error;
    if (part.type === "text-delta") text += part.text;
    if (part.type === "tool-call") sawToolCall = true;
    if (!sawToolCall && part.type === "text-start") textPartsBeforeToolCall.push(part.id);
  }
  return { types, text, text_parts_before_tool_call: textPartsBeforeToolCall.length };
}

const contentSummary = (content) =>
  content.map((part) => ({ type: part.type, empty: part.type === "text" && part.text === "" }));

const cases = {};
for (const [name, model] of Object.entries(providers)) {
  cases[`${name}.stream_text`] = async () => {
    const result = streamText({ model, prompt, maxOutputTokens: 60 });
    const read = await readFullStream(result);
    return { ...read, finish_reason: await result.finishReason, usage: await result.usage };
  };

  cases[`${name}.generate_text`] = async () => {
    const result = await generateText({ model, prompt, maxOutputTokens: 60 });
    return { text: result.text, finish_reason: result.finishReason, usage: result.usage };
  };

  cases[`${name}.tool_call_stream`] = async () => {
    // No execute: the step ends at the call, as an app that runs tools itself sees it.
    const result = streamText({
      model,
      prompt: weatherQuestion,
      tools: { get_weather: weatherTool(undefined) },
    });
    const read = await readFullStream(result);
    const calls = await result.toolCalls;
    return {
      ...read,
      finish_reason: await result.finishReason,
      content: contentSummary(await result.content),
      tool_calls: calls.map((call) => ({ name: call.toolName, input: call.input })),
    };
  };

  cases[`${name}.tool_loop`] = async () => {
    // The SDK runs the tool and sends its result back; the model then answers.
    const calledWith = [];
    const result = await generateText({
      model,
      prompt: weatherQuestion,
      tools: {
        get_weather: weatherTool(async ({ location }) => {
          calledWith.push(location);
          return `Sunny and 21 degrees in ${location}.`;
        }),
      },
      stopWhen: stepCountIs(4),
      maxOutputTokens: 200,
    });
    return {
      steps: result.steps.length,
      called_with: calledWith,
      finish_reason: result.finishReason,
      text: result.text,
      first_step_content: contentSummary(result.steps[0].content),
    };
  };

  cases[`${name}.generate_object`] = async () => {
    const result = await generateObject({
      model,
      schema: cityFacts,
      prompt: "Give facts about Paris.",
    });
    return { object: result.object, finish_reason: result.finishReason };
  };
}

// Anthropic's other structured-output mode: a forced tool whose input is the object.
cases["anthropic.generate_object_json_tool"] = async () => {
  const result = await generateObject({
    model: providers.anthropic,
    schema: cityFacts,
    prompt: "Give facts about Paris.",
    providerOptions: { anthropic: { structuredOutputMode: "jsonTool" } },
  });
  return { object: result.object, finish_reason: result.finishReason };
};

// An error the server finds in the body: the SDK's fetch sends no Accept header,
// and reads the error's message from a JSON body.
cases["openai_compatible.bad_request_error"] = async () => {
  try {
    await generateText({ model: providers.openai_compatible, prompt, temperature: 5, maxRetries: 0 });
  } catch (error) {
    return {
      is_api_call_error: APICallError.isInstance(error),
      status: error.statusCode ?? null,
      message: error.message,
      response_content_type: error.responseHeaders?.["content-type"] ?? null,
    };
  }
  throw new Error("temperature 5 did not raise");
};

await runCases(cases);
