"""Usage accounting: what a choice generated (``Transcript``), the tokens counted (``Usage``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamapi.engines.protocol import TokenDelta, UsageReport
from streamapi.serving.generation import Job


@dataclass(slots=True)
class ToolCallRecord:
    """One tool call as it accumulates."""

    id: str
    name: str
    arguments: list[str]

    @property
    def arguments_text(self) -> str:
        return "".join(self.arguments)


@dataclass(slots=True)
class Transcript:
    """Everything one choice generated, gathered from its deltas."""

    content: list[str]
    reasoning: list[str]
    tool_calls: list[ToolCallRecord]
    logprobs: list[TokenDelta]
    finish_reason: str | None = None

    @classmethod
    def empty(cls) -> Transcript:
        return cls([], [], [], [])

    def add(self, delta: TokenDelta) -> None:
        if delta.tool_call is not None:
            self.tool_calls.append(ToolCallRecord(delta.tool_call.id, delta.tool_call.name, []))
        elif delta.channel == "tool_call":
            self.tool_calls[delta.tool_index].arguments.append(delta.text)
        elif delta.channel == "reasoning":
            self.reasoning.append(delta.text)
        else:
            self.content.append(delta.text)
            if delta.logprob is not None:
                self.logprobs.append(delta)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


@dataclass(slots=True)
class Usage:
    """Tokens generated so far, counted as the deltas go by.

    One delta is one token, unless a choice's last delta carries the engine's
    own ``UsageReport`` (an upstream's chunks may hold several tokens): its
    counts then replace what was counted for that choice, and reported prompt
    tokens replace ours once every prompt of the job has reported (each prompt
    counted once however many choices answer it, as OpenAI counts ``n``).
    """

    prompt_tokens: int
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    n: int = 1
    prompts: int = 1
    # Each choice's tokens and reasoning tokens counted so far (what a report replaces).
    _tokens: dict[int, int] = field(default_factory=dict)
    _reasoning: dict[int, int] = field(default_factory=dict)
    _reported_prompts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> Usage:
        """Empty usage for ``job``, with its prompt tokens counted."""
        return cls(job.prompt_tokens, n=job.n, prompts=max(1, len(job.choices) // job.n))

    def add(self, delta: TokenDelta, index: int = 0) -> None:
        """Count ``delta`` of choice ``index``."""
        if delta.cached_prompt_tokens:
            # Every choice shares the prompt: its cached part is counted once.
            self.cached_tokens = max(self.cached_tokens, delta.cached_prompt_tokens)
        if delta.text or delta.tool_call is not None:  # delta.is_token, once per token
            tokens = self._tokens
            tokens[index] = tokens.get(index, 0) + 1
            self.completion_tokens += 1
            if delta.channel == "reasoning":
                reasoning = self._reasoning
                reasoning[index] = reasoning.get(index, 0) + 1
                self.reasoning_tokens += 1
        if delta.usage is not None:
            self._report(index, delta.usage)

    def _report(self, index: int, report: UsageReport) -> None:
        self.completion_tokens += report.completion_tokens - self._tokens.get(index, 0)
        self._tokens[index] = report.completion_tokens
        if report.reasoning_tokens is not None:
            self.reasoning_tokens += report.reasoning_tokens - self._reasoning.get(index, 0)
            self._reasoning[index] = report.reasoning_tokens
        if report.cached_tokens is not None:
            self.cached_tokens = max(self.cached_tokens, report.cached_tokens)
        if report.prompt_tokens is not None:
            self._reported_prompts[index // self.n] = report.prompt_tokens
            if len(self._reported_prompts) == self.prompts:
                self.prompt_tokens = sum(self._reported_prompts.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
