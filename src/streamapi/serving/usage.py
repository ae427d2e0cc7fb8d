"""Usage accounting: what a choice generated (``Transcript``), the tokens counted (``Usage``)."""

from __future__ import annotations

from dataclasses import dataclass

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


class Usage:
    """Tokens generated so far, counted as the deltas go by.

    One delta is one token, unless a choice's last delta carries the engine's
    own ``UsageReport`` (an upstream's chunks may hold several tokens): its
    counts then replace what was counted for that choice, and reported prompt
    tokens replace ours once every prompt of the job has reported (each prompt
    counted once however many choices answer it, as OpenAI counts ``n``).
    """

    # An open stream holds one: per-choice counts are lists, made when first needed.
    __slots__ = (
        "_reasoning",
        "_reported_prompts",
        "_tokens",
        "cached_tokens",
        "completion_tokens",
        "n",
        "prompt_tokens",
        "prompts",
        "reasoning_tokens",
    )

    def __init__(self, prompt_tokens: int, *, choices: int = 1, n: int = 1) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.cached_tokens = 0
        self.n = n
        self.prompts = max(1, choices // n)
        # Each choice's tokens and reasoning tokens counted so far (what a report replaces).
        self._tokens = [0] * choices
        self._reasoning: list[int] | None = None
        # Each prompt's reported prompt tokens (None: not reported yet).
        self._reported_prompts: list[int | None] | None = None

    @classmethod
    def of(cls, job: Job) -> Usage:
        """Empty usage for ``job``, with its prompt tokens counted."""
        return cls(job.prompt_tokens, choices=job.choice_count, n=job.n)

    def add(self, delta: TokenDelta, index: int = 0) -> None:
        """Count ``delta`` of choice ``index``."""
        if delta.cached_prompt_tokens:
            # Every choice shares the prompt: its cached part is counted once.
            self.cached_tokens = max(self.cached_tokens, delta.cached_prompt_tokens)
        if delta.text or delta.tool_call is not None:  # delta.is_token, once per token
            self._tokens[index] += 1
            self.completion_tokens += 1
            if delta.channel == "reasoning":
                self._reasoning_counts()[index] += 1
                self.reasoning_tokens += 1
        if delta.usage is not None:
            self._report(index, delta.usage)

    def _report(self, index: int, report: UsageReport) -> None:
        self.completion_tokens += report.completion_tokens - self._tokens[index]
        self._tokens[index] = report.completion_tokens
        if report.reasoning_tokens is not None:
            reasoning = self._reasoning_counts()
            self.reasoning_tokens += report.reasoning_tokens - reasoning[index]
            reasoning[index] = report.reasoning_tokens
        if report.cached_tokens is not None:
            self.cached_tokens = max(self.cached_tokens, report.cached_tokens)
        if report.prompt_tokens is not None:
            if self._reported_prompts is None:
                self._reported_prompts = [None] * self.prompts
            reported = self._reported_prompts
            reported[index // self.n] = report.prompt_tokens
            if None not in reported:
                self.prompt_tokens = sum(t for t in reported if t is not None)

    def _reasoning_counts(self) -> list[int]:
        if self._reasoning is None:
            self._reasoning = [0] * len(self._tokens)
        return self._reasoning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
