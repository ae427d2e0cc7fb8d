"""Legacy completions (``/v1/completions``): text choices, streamed or whole.

Stream events and the whole response share one shape, ``text_completion``;
there is no role chunk. With several prompts, choice ``i * n + j`` is the
``j``-th choice of prompt ``i``, as OpenAI numbers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from streamapi import sse
from streamapi.engines.protocol import GenerationRequest, PromptMessage, TokenDelta
from streamapi.errors import InvalidRequestError
from streamapi.schemas.openai import CompletionRequest
from streamapi.serving.chat import render_error, usage_dict
from streamapi.serving.generation import Admission, Generation, Job
from streamapi.serving.request_limits import check_top_logprobs
from streamapi.serving.usage import Usage
from streamapi.text.logprobs import logprob, top_logprobs
from streamapi.text.tokenizer import count_tokens, tokenize


@dataclass(frozen=True, slots=True)
class CompletionJob:
    """A checked completion request."""

    job: Job
    echoes: tuple[tuple[TokenDelta, ...], ...]
    """Per choice, the prompt's tokens to put before its completion (``echo``)."""
    include_usage: bool
    logprobs: bool


class CompletionService:
    """Serves ``/v1/completions``."""

    def __init__(self, generation: Generation, *, tokens_per_event: int) -> None:
        self._generation = generation
        self._tokens_per_event = tokens_per_event

    def prepare(self, request: CompletionRequest) -> CompletionJob:
        """Check everything that can fail before the first byte."""
        generation = self._generation
        if request.stream_options is not None and not request.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )
        n = request.n or 1
        if request.max_tokens == 0 and not request.echo:
            raise InvalidRequestError(
                "max_tokens may be 0 only with echo (to score the prompt).", param="max_tokens"
            )
        if request.best_of is not None and request.best_of < n:
            raise InvalidRequestError("best_of must be at least n.", param="best_of")
        if request.logprobs:
            check_top_logprobs(
                n,
                request.logprobs,
                limit=generation.settings.max_top_logprobs_total,
                param="logprobs",
            )
        model = generation.resolve_model(request.model)
        prompts = _prompts(request.prompt)
        templates = [
            GenerationRequest(
                model=model,
                messages=(PromptMessage("user", text),),
                max_tokens=request.max_tokens,
                stop=(request.stop,)
                if isinstance(request.stop, str)
                else tuple(request.stop or ()),
                seed=request.seed,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                ignore_eos=bool(request.ignore_eos),
                reasoning=False,
                logprobs=request.logprobs,
            )
            for text, _ in prompts
        ]
        job = generation.job(
            templates, n=n, id_prefix="cmpl-", prompt_tokens=[count for _, count in prompts]
        )
        echoes = (
            tuple(_echo(text, request.logprobs) for text, _ in prompts for _ in range(n))
            if request.echo
            else ()
        )
        options = request.stream_options
        return CompletionJob(
            job=job,
            echoes=echoes,
            include_usage=bool(options and options.include_usage),
            logprobs=request.logprobs is not None,
        )

    async def stream(self, completion: CompletionJob, admission: Admission) -> AsyncIterator[bytes]:
        """SSE frames of a streamed completion, ending with ``[DONE]``."""
        job = completion.job
        usage = Usage.of(job)
        offsets = [0] * job.choice_count
        pending: dict[int, list[TokenDelta]] = {}
        # The frames that end the stream: every choice's finish chunk, the usage chunk,
        # an error, and [DONE] are ready together, so they go out in one write.
        tail = b""
        unfinished = job.choice_count
        try:
            for index, echo in enumerate(completion.echoes):
                text = "".join(d.text for d in echo)
                logprobs = _logprobs(list(echo), 0) if completion.logprobs else None
                offsets[index] = len(text)
                yield self._chunk(job, index, text, logprobs=logprobs)
            async for batch in self._generation.batches(admission):
                # Deltas that were ready together go out in one write.
                frames: list[bytes] = []
                for index, delta in batch:
                    usage.add(delta, index)
                    group = pending.setdefault(index, [])
                    if delta.text:
                        group.append(delta)
                    if group and (len(group) >= self._tokens_per_event or delta.finish_reason):
                        text = "".join(d.text for d in group)
                        logprobs = _logprobs(group, offsets[index]) if completion.logprobs else None
                        offsets[index] += len(text)
                        frames.append(self._chunk(job, index, text, logprobs=logprobs))
                        group.clear()
                    if (finish := delta.finish_reason) is not None:
                        frames.append(self._chunk(job, index, "", finish_reason=finish))
                        unfinished -= 1
                if frames:
                    if unfinished <= 0:
                        # The engine's stream ends with this batch.
                        tail += b"".join(frames)
                    else:
                        yield b"".join(frames)
            if completion.include_usage:
                tail += sse.encode_data(_body(job, [], usage_dict(usage)))
        except Exception as exc:
            tail += b"".join(self._generation.stream_error(exc, job.id, render_error))
        yield tail + sse.DONE

    async def complete(self, completion: CompletionJob, admission: Admission) -> dict[str, Any]:
        """The whole completion (``stream`` false)."""
        job = completion.job
        usage = Usage.of(job)
        texts: list[list[TokenDelta]] = [[] for _ in range(job.choice_count)]
        finish: list[str | None] = [None] * job.choice_count
        async for batch in self._generation.batches(admission):
            for index, delta in batch:
                usage.add(delta, index)
                if delta.text:
                    texts[index].append(delta)
                if delta.finish_reason is not None:
                    finish[index] = delta.finish_reason
        echoes = completion.echoes or ((),) * job.choice_count
        whole = [[*echo, *deltas] for echo, deltas in zip(echoes, texts, strict=True)]
        choices = [
            {
                "index": i,
                "text": "".join(d.text for d in tokens),
                "logprobs": _logprobs(tokens, 0) if completion.logprobs else None,
                "finish_reason": finish[i],
            }
            for i, tokens in enumerate(whole)
        ]
        return _body(job, choices, usage_dict(usage))

    def _chunk(
        self,
        job: Job,
        index: int,
        text: str,
        *,
        logprobs: dict[str, Any] | None = None,
        finish_reason: str | None = None,
    ) -> bytes:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return sse.encode_data(_body(job, [choice], None))


def _body(job: Job, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "object": "text_completion",
        "created": job.created,
        "model": job.model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[tuple[str, int]]:
    """Each prompt's text and token count; token ids are counted, not decoded."""
    items: list[str | list[int]]
    if isinstance(prompt, str):
        items = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]  # type: ignore[list-item]
    else:
        items = list(prompt)  # type: ignore[arg-type]
    if not items:
        raise InvalidRequestError("prompt must not be empty.", param="prompt")
    prompts: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            prompts.append((item, count_tokens(item)))
        elif not item:
            raise InvalidRequestError("A token-id prompt must not be empty.", param="prompt")
        else:
            # The simulator cannot decode ids; it answers about a neutral subject.
            prompts.append(("Continue the text.", len(item)))
    return prompts


def _echo(prompt: str, alternatives: int | None) -> tuple[TokenDelta, ...]:
    """The prompt as tokens, scored like generated ones (the first has no logprob)."""
    tokens = tokenize(prompt)
    if alternatives is None:
        return tuple(TokenDelta(t) for t in tokens)
    return tuple(
        TokenDelta(
            t,
            logprob=None if i == 0 else logprob(t, i),
            top_logprobs=() if i == 0 else top_logprobs(t, i, alternatives),
        )
        for i, t in enumerate(tokens)
    )


def _logprobs(deltas: list[TokenDelta], offset: int) -> dict[str, Any]:
    offsets = []
    for d in deltas:
        offsets.append(offset)
        offset += len(d.text)
    return {
        "tokens": [d.text for d in deltas],
        "token_logprobs": [d.logprob for d in deltas],
        "top_logprobs": [dict(d.top_logprobs) if d.logprob is not None else None for d in deltas],
        "text_offset": offsets,
    }
