"""The continuous-batching model, checked to the float in virtual time.

Every expected time below is computed from the formulas of docs/engine-model.md, not read
back from the scheduler: ``decode_ms(d) = ITL x (1 + load x (d-1)/(max-1))``
and ``prefill_ms(u) = TTFT + per_token x u`` per step.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
from collections.abc import AsyncIterator, Iterator

import pytest

from streamapi.engines.prefix_cache import BLOCK_TOKENS, PrefixCache
from streamapi.engines.protocol import FinishReason, GenerationRequest, PromptMessage, TokenDelta
from streamapi.engines.scheduler import (
    BatchModel,
    DeltaList,
    Pace,
    ScheduledSequence,
    Scheduler,
)
from streamapi.engines.simulator import SimulatorEngine
from streamapi.errors import APIError, RateLimitError, ServiceUnavailableError
from streamapi.text.tokenizer import chat_prompt_tokens
from tests.virtual_time import virtual_time

MS = 1 / 1000
LIMIT_S = 3600.0  # virtual seconds: a wait that never ends fails instead of hanging


@pytest.fixture
async def clock() -> AsyncIterator[asyncio.AbstractEventLoop]:
    with virtual_time():
        yield asyncio.get_running_loop()


def sequence(
    scheduler: Scheduler, name: str, *, tokens: int, prompt: int = 10
) -> ScheduledSequence:
    # Prompts differ by name, so the prefix cache never matches across sequences.
    return ScheduledSequence(
        scheduler,
        plan=planned([f" t{i}" for i in range(tokens)], "length"),
        prompt=[f"{name}{i}" for i in range(prompt)],
    )


def planned(tokens: list[str], finish_reason: FinishReason) -> DeltaList:
    """A planner's output: a delta a token, the finish reason on the last."""
    return DeltaList(
        [
            TokenDelta(t, finish_reason if i == len(tokens) - 1 else None)
            for i, t in enumerate(tokens)
        ]
    )


async def arrivals(stream: ScheduledSequence, start: float) -> list[float]:
    """When each token reached the consumer, in seconds after ``start``."""
    loop = asyncio.get_running_loop()
    return [loop.time() - start async for _ in stream]


async def gather(*coroutines: object) -> list[list[float]]:
    results = await asyncio.wait_for(asyncio.gather(*coroutines), LIMIT_S)  # type: ignore[call-overload]
    return list(results)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_a_lone_request_has_the_configured_ttft_and_itl(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(time_to_first_token_ms=100, inter_token_latency_ms=5, load_factor=3)
    scheduler = Scheduler(model)
    start = clock.time()
    seq = sequence(scheduler, "a", tokens=6)
    scheduler.submit(seq)
    (times,) = await gather(arrivals(seq, start))
    assert times[0] == pytest.approx(0.100)
    assert gaps(times) == pytest.approx([0.005] * 5)
    await scheduler.aclose()


async def test_ttft_grows_with_prompt_length(clock: asyncio.AbstractEventLoop) -> None:
    model = BatchModel(
        time_to_first_token_ms=20, prefill_ms_per_token=0.5, inter_token_latency_ms=5
    )
    scheduler = Scheduler(model)
    ttfts = []
    for prompt in (10, 100, 1000):
        start = clock.time()
        seq = sequence(scheduler, f"p{prompt}", tokens=2, prompt=prompt)
        scheduler.submit(seq)
        (times,) = await gather(arrivals(seq, start))
        ttfts.append(times[0])
    assert ttfts == pytest.approx([(20 + 0.5 * p) * MS for p in (10, 100, 1000)])
    await scheduler.aclose()


async def test_queue_time_and_ttft_rise_with_queue_position(
    clock: asyncio.AbstractEventLoop,
) -> None:
    # Six equal requests at once, two slots: they run in three waves.
    model = BatchModel(
        time_to_first_token_ms=10,
        prefill_ms_per_token=0.1,
        inter_token_latency_ms=4,
        load_factor=1,
        max_num_seqs=2,
        enable_prefix_caching=False,
    )
    scheduler = Scheduler(model)
    tokens, prompt = 5, 100
    start = clock.time()
    seqs = [sequence(scheduler, f"s{i}", tokens=tokens, prompt=prompt) for i in range(6)]
    for seq in seqs:
        scheduler.submit(seq)
    assert (scheduler.running, scheduler.waiting) == (0, 6)
    results = await gather(*(arrivals(s, start) for s in seqs))

    prefill_ms = 10 + 0.1 * (2 * prompt)  # one step prefills both sequences of a wave
    decode_ms = 4 * (1 + 1 * (2 - 1) / (2 - 1))  # a full batch of two
    wave_ms = prefill_ms + (tokens - 1) * decode_ms
    for position, (seq, times) in enumerate(zip(seqs, results, strict=True)):
        wave = position // 2
        assert seq.scheduled_at - seq.enqueued_at == pytest.approx(wave * wave_ms * MS)
        assert times[0] == pytest.approx((wave * wave_ms + prefill_ms) * MS)
        assert gaps(times) == pytest.approx([decode_ms * MS] * (tokens - 1))
    await scheduler.aclose()


@pytest.mark.parametrize("batch", [1, 4, 8])
async def test_inter_token_latency_grows_with_the_batch(
    clock: asyncio.AbstractEventLoop, batch: int
) -> None:
    model = BatchModel(
        time_to_first_token_ms=30, inter_token_latency_ms=10, load_factor=2, max_num_seqs=8
    )
    scheduler = Scheduler(model)
    start = clock.time()
    seqs = [sequence(scheduler, f"b{i}", tokens=8) for i in range(batch)]
    for seq in seqs:
        scheduler.submit(seq)
    results = await gather(*(arrivals(s, start) for s in seqs))
    expected = 10 * (1 + 2 * (batch - 1) / (8 - 1)) * MS
    for times in results:
        assert gaps(times) == pytest.approx([expected] * 7)
    await scheduler.aclose()


async def test_an_admission_mid_stream_stretches_that_step_by_its_prefill(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(prefill_overhead_ms=50, inter_token_latency_ms=10, max_num_seqs=4)
    scheduler = Scheduler(model)
    start = clock.time()
    first = sequence(scheduler, "a", tokens=10)
    scheduler.submit(first)
    late = sequence(scheduler, "b", tokens=3)

    async def submit_late() -> list[float]:
        await asyncio.sleep(0.075)  # during first's third step (50, 60, 70, 80 ms)
        scheduler.submit(late)
        return await arrivals(late, start)

    times, late_times = await gather(arrivals(first, start), submit_late())
    # first: prefill ends at 50, decode steps at 60, 70, 80; then a step that
    # decodes first and prefills late: 10 + 50 ms; then 10 ms steps again.
    assert times[:5] == pytest.approx([0.050, 0.060, 0.070, 0.080, 0.140])
    assert gaps(times[4:]) == pytest.approx([0.010] * 5)
    assert late_times == pytest.approx([0.140, 0.150, 0.160])
    await scheduler.aclose()


async def test_time_to_first_token_holds_a_slot_but_does_not_stall_the_batch(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(time_to_first_token_ms=45, inter_token_latency_ms=10, max_num_seqs=4)
    scheduler = Scheduler(model)
    start = clock.time()
    first = sequence(scheduler, "a", tokens=12)
    scheduler.submit(first)
    late = sequence(scheduler, "b", tokens=3)

    async def submit_late() -> list[float]:
        await asyncio.sleep(0.070)  # during the step from 65 to 75 ms
        scheduler.submit(late)
        return await arrivals(late, start)

    times, late_times = await gather(arrivals(first, start), submit_late())
    assert times == pytest.approx([0.045 + 0.010 * i for i in range(12)])
    # late: admitted at 75 ms, prefilled by 85, first token 45 ms later; it joins
    # the batch at the next step (125 to 135 is under way) and decodes from 135.
    assert late_times == pytest.approx([0.130, 0.145, 0.155])
    assert scheduler.running == 0
    await scheduler.aclose()


async def test_with_the_default_profile_arrivals_do_not_stall_running_streams(
    clock: asyncio.AbstractEventLoop,
) -> None:
    # The default profile's 100 ms is a per-sequence latency, not a step cost:
    # ten arrivals a second must not hold up the tokens of the streams already running.
    model = BatchModel(time_to_first_token_ms=100, inter_token_latency_ms=5, load_factor=1)
    scheduler = Scheduler(model)

    async def arrive(i: int) -> list[float]:
        await asyncio.sleep(i * 0.1)
        seq = sequence(scheduler, f"r{i}", tokens=350)
        scheduler.submit(seq)
        return await arrivals(seq, clock.time())

    results = await gather(*(arrive(i) for i in range(20)))
    step = 5 * (1 + 1 * (20 - 1) / (256 - 1)) * MS + 1e-9  # the widest decode step
    # A request waits out the step under way, is prefilled in the next (no prefill
    # cost in this profile, but the step decodes the others), then waits its 100 ms;
    # it joins the batch at the step after its first token.
    assert all(0.100 - 1e-9 <= times[0] <= 0.100 + 2 * step for times in results)
    assert all(gaps(times)[0] <= 2 * step for times in results)
    assert max(max(gaps(times)[1:]) for times in results) <= step
    await scheduler.aclose()


async def test_an_aborted_sequence_leaves_the_batch_and_its_slot_is_reused_at_once(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(time_to_first_token_ms=20, inter_token_latency_ms=10, max_num_seqs=1)
    scheduler = Scheduler(model)
    start = clock.time()
    long = sequence(scheduler, "long", tokens=1000)
    waiting = sequence(scheduler, "next", tokens=2)
    scheduler.submit(long)
    scheduler.submit(waiting)

    async def read_three_then_leave() -> list[float]:
        times = []
        async for _ in long:
            times.append(clock.time() - start)
            if len(times) == 3:
                await asyncio.sleep(0.004)  # leave in the middle of a step
                await long.aclose()
        return times

    long_times, next_times = await gather(read_three_then_leave(), arrivals(waiting, start))
    # long's tokens at 20, 30, 40 ms; it leaves at 44 ms, mid-step; that step
    # still ends at 50 ms, and the next one admits the waiting sequence.
    assert long_times == pytest.approx([0.020, 0.030, 0.040])
    assert waiting.scheduled_at - start == pytest.approx(0.050)
    assert next_times == pytest.approx([0.070, 0.080])
    assert long.produced == 3  # it got nothing from the step it left during
    await scheduler.aclose()


async def test_a_sequence_closed_before_it_was_iterated_frees_its_place(
    clock: asyncio.AbstractEventLoop,
) -> None:
    scheduler = Scheduler(BatchModel(time_to_first_token_ms=20, max_num_seqs=1))
    seqs = [sequence(scheduler, f"x{i}", tokens=5) for i in range(3)]
    for seq in seqs:
        scheduler.submit(seq)
    await asyncio.sleep(0.001)
    assert (scheduler.running, scheduler.waiting) == (1, 2)
    for seq in seqs:
        await seq.aclose()
        await seq.aclose()  # idempotent
    assert (scheduler.running, scheduler.waiting) == (0, 0)
    assert [tok async for tok in seqs[0]] == []
    await scheduler.aclose()


async def test_a_full_queue_refuses_with_a_retry_estimate(clock: asyncio.AbstractEventLoop) -> None:
    model = BatchModel(inter_token_latency_ms=10, max_num_seqs=2, max_waiting_requests=3)
    scheduler = Scheduler(model)
    for i in range(5):
        scheduler.submit(sequence(scheduler, f"q{i}", tokens=100))
    with pytest.raises(RateLimitError) as refused:
        scheduler.submit(sequence(scheduler, "q5", tokens=100))
    assert refused.value.status_code == 429
    assert refused.value.headers["Retry-After"] == "1"
    await asyncio.sleep(0.505)  # both running sequences have 51 tokens, at 0, 10, ... 500 ms
    assert (scheduler.running, scheduler.waiting) == (2, 3)
    with pytest.raises(RateLimitError) as later:
        scheduler.submit(sequence(scheduler, "q6", tokens=100))
    # 49 tokens to go, at a step of 10 x (1 + 0) ms
    assert later.value.retry_after_s == pytest.approx(0.49)
    await scheduler.aclose()


async def test_the_kv_budget_holds_back_a_sequence_that_does_not_fit(
    clock: asyncio.AbstractEventLoop,
) -> None:
    # Each sequence needs 100 prompt + 100 output tokens of KV; 300 fit one.
    model = BatchModel(inter_token_latency_ms=1, max_num_seqs=8, kv_cache_tokens=300)
    scheduler = Scheduler(model)
    seqs = [sequence(scheduler, f"k{i}", tokens=100, prompt=100) for i in range(2)]
    for seq in seqs:
        scheduler.submit(seq)
    await asyncio.sleep(0.0105)
    assert (scheduler.running, scheduler.waiting) == (1, 1)
    assert scheduler.kv_cache_usage() == pytest.approx((100 + 11) / 300)
    await gather(*(arrivals(s, 0) for s in seqs))
    # Step ends are sums of floats on the loop's clock: allow their rounding.
    assert seqs[1].scheduled_at - seqs[0].first_token_at >= 99 * MS - 1e-9
    await scheduler.aclose()


async def test_a_slow_consumer_does_not_slow_the_engine(clock: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(BatchModel(time_to_first_token_ms=10, inter_token_latency_ms=1))
    seq = sequence(scheduler, "slow", tokens=50)
    scheduler.submit(seq)
    await asyncio.sleep(1.0)
    # The engine finished long ago; the consumer's backlog is its plan, no more.
    assert (seq.produced, seq.consumed, scheduler.running) == (50, 0, 0)
    assert len([tok async for tok in seq]) == 50
    await scheduler.aclose()


async def test_the_loop_is_idle_between_bursts(clock: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(BatchModel(time_to_first_token_ms=1, inter_token_latency_ms=1))
    seq = sequence(scheduler, "a", tokens=3)
    scheduler.submit(seq)
    await gather(arrivals(seq, 0))
    await asyncio.sleep(0)
    # No timer left: the idle loop waits on a future, it does not poll.
    timers = [h for h in clock._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert timers == []
    again = sequence(scheduler, "b", tokens=2)
    start = clock.time()
    scheduler.submit(again)
    assert await gather(arrivals(again, start)) == [pytest.approx([0.001, 0.002])]
    await scheduler.aclose()


async def test_aclose_stops_the_loop_and_ends_open_sequences_with_503(
    clock: asyncio.AbstractEventLoop,
) -> None:
    scheduler = Scheduler(BatchModel(inter_token_latency_ms=10))
    seq = sequence(scheduler, "a", tokens=100)
    scheduler.submit(seq)
    await anext(seq)
    await scheduler.aclose()
    with pytest.raises(ServiceUnavailableError):
        await anext(seq)
    await seq.aclose()
    with pytest.raises(ServiceUnavailableError):
        scheduler.submit(sequence(scheduler, "b", tokens=1))


@pytest.mark.parametrize("ending", ["abort", "engine stops"])
async def test_a_waiting_consumer_gets_the_end_and_one_cancelled_meanwhile_logs_nothing(
    clock: asyncio.AbstractEventLoop, ending: str
) -> None:
    # A sequence hands its consumer a future; the step loop settles it with the next
    # delta, the end or an error. A consumer cancelled after its future was settled (a
    # client leaving as its stream ends) never reads it: that is no error to report.
    reported: list[dict[str, object]] = []
    clock.set_exception_handler(lambda _, context: reported.append(context))
    scheduler = Scheduler(BatchModel(inter_token_latency_ms=10))

    async def end(seq: ScheduledSequence) -> None:
        if ending == "abort":
            await seq.aclose()
        else:
            await scheduler.aclose()

    read, left = sequence(scheduler, "read", tokens=100), sequence(scheduler, "left", tokens=100)
    for seq in (read, left):
        scheduler.submit(seq)
    await gather(anext(read), anext(left))  # the same step's tokens: none is ready now

    async def next_delta(seq: ScheduledSequence) -> TokenDelta:
        return await anext(seq)

    reader = asyncio.create_task(next_delta(read))
    leaver = asyncio.create_task(next_delta(left))
    await asyncio.sleep(0)  # both wait on their futures now
    await end(read)
    if ending == "abort":
        await end(left)
    leaver.cancel()  # its future is settled already: the cancel wins, the end goes unread
    if ending == "abort":
        with pytest.raises(StopAsyncIteration):
            await reader
    else:
        with pytest.raises(ServiceUnavailableError):
            await reader
    with pytest.raises(asyncio.CancelledError):
        await leaver
    del reader, leaver, read, left
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_jitter_is_bounded_and_reproducible_with_a_seed(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(inter_token_latency_ms=10, latency_jitter_pct=20)

    async def run(seed: int) -> list[float]:
        scheduler = Scheduler(model, rng=random.Random(seed))
        seq = sequence(scheduler, "j", tokens=30)
        scheduler.submit(seq)
        (times,) = await gather(arrivals(seq, clock.time()))
        await scheduler.aclose()
        return gaps(times)

    first, same, other = await run(7), await run(7), await run(8)
    assert first == pytest.approx(same)
    assert first != pytest.approx(other)
    assert all(0.008 - 1e-9 <= gap <= 0.012 + 1e-9 for gap in first)


async def test_a_paced_sequence_keeps_its_own_pace_and_takes_a_slot(
    clock: asyncio.AbstractEventLoop,
) -> None:
    model = BatchModel(time_to_first_token_ms=1, inter_token_latency_ms=1, max_num_seqs=1)
    scheduler = Scheduler(model)
    start = clock.time()
    paced = ScheduledSequence(
        scheduler, plan=planned(["a", "b", "c"], "stop"), prompt=["p"],
        pace=Pace(ttft_s=0.5, itl_s=0.25),
    )  # fmt: skip
    after = sequence(scheduler, "after", tokens=1)
    scheduler.submit(paced)
    scheduler.submit(after)
    paced_times, after_times = await gather(arrivals(paced, start), arrivals(after, start))
    assert paced_times == pytest.approx([0.5, 0.75, 1.0])
    assert after_times == pytest.approx([1.001])  # the slot frees at 1.0 s
    await scheduler.aclose()


def test_prefix_cache_hits_whole_blocks_of_a_repeated_prefix() -> None:
    cache = PrefixCache(capacity_tokens=10 * BLOCK_TOKENS)
    prompt = [f"w{i}" for i in range(50)]
    assert cache.admit(prompt) == 0
    assert cache.admit(prompt) == 48  # three whole blocks
    assert cache.admit([*prompt[:40], "other"]) == 32
    assert cache.admit(["x", *prompt]) == 0  # a prefix must match from the start
    assert cache.admit(prompt[:16]) == 15  # the last prompt token is always computed


def test_prefix_cache_forgets_the_least_recent_blocks() -> None:
    cache = PrefixCache(capacity_tokens=4 * BLOCK_TOKENS)
    first, second = [f"a{i}" for i in range(32)], [f"b{i}" for i in range(48)]
    cache.admit(first)
    cache.admit(second)
    assert cache.admit(first) == 0
    assert cache.admit(first) == 31


async def test_the_simulator_reports_cached_prompt_tokens_on_the_first_delta(
    clock: asyncio.AbstractEventLoop,
) -> None:
    engine = SimulatorEngine(batch=BatchModel(prefill_ms_per_token=1))
    question = "Explain prefix caching " * 20
    request = GenerationRequest(
        model="m", messages=(PromptMessage("user", question),), max_tokens=3, seed=1
    )
    start = clock.time()
    first = [(d.cached_prompt_tokens, clock.time() - start) async for d in engine.stream(request)]
    start = clock.time()
    second = [(d.cached_prompt_tokens, clock.time() - start) async for d in engine.stream(request)]
    prompt_tokens = len(chat_prompt_tokens([("user", question)]))
    cached = (prompt_tokens // BLOCK_TOKENS) * BLOCK_TOKENS
    assert [c for c, _ in first] == [0, 0, 0]
    assert [c for c, _ in second] == [cached, 0, 0]
    assert first[0][1] == pytest.approx(prompt_tokens * MS)
    assert second[0][1] == pytest.approx((prompt_tokens - cached) * MS)
    await engine.aclose()


async def test_output_tokens_override_sets_the_answer_length(
    clock: asyncio.AbstractEventLoop,
) -> None:
    engine = SimulatorEngine()
    request = GenerationRequest(
        model="m", messages=(PromptMessage("user", "hi"),), output_tokens=700, seed=1
    )
    deltas = [d async for d in engine.stream(request)]
    assert len(deltas) == 700
    assert deltas[-1].finish_reason == "stop"
    capped = GenerationRequest(
        model="m", messages=(PromptMessage("user", "hi"),), output_tokens=50, max_tokens=20
    )
    assert SimulatorEngine().plan(capped).finish_reason == "length"
    await engine.aclose()


async def test_the_docs_worked_example(clock: asyncio.AbstractEventLoop) -> None:
    # docs/engine-model.md, "Worked example": the 8b-1gpu profile, 4 slots,
    # six requests at once with 1000-token prompts and 100 output tokens.
    model = BatchModel(
        time_to_first_token_ms=5,
        prefill_overhead_ms=15,
        prefill_ms_per_token=0.06,
        inter_token_latency_ms=7,
        load_factor=2,
        max_num_seqs=4,
        enable_prefix_caching=False,
    )
    scheduler = Scheduler(model)
    start = clock.time()
    seqs = [sequence(scheduler, f"r{i}", tokens=100, prompt=1000) for i in range(6)]
    for seq in seqs:
        scheduler.submit(seq)
    results = await gather(*(arrivals(s, start) for s in seqs))
    ms = [[round(t * 1000, 2) for t in (times[0], times[1], times[-1])] for times in results]
    queued = [round((s.scheduled_at - s.enqueued_at) * 1000, 2) for s in seqs]
    assert ms[:4] == [[260.0, 281.0, 2339.0]] * 4
    assert ms[4:] == [[2479.0, 2490.67, 3634.0]] * 2
    assert queued == [0.0] * 4 + [2339.0] * 2
    await scheduler.aclose()


async def test_ready_tokens_are_taken_together_and_the_loop_still_yields() -> None:
    # Steps of no length run back to back, so a consumer finds many tokens ready
    # at once (take_ready hands them over, in order) while the step loop still
    # lets the rest of the event loop run every _TOKENS_PER_WAKE tokens or so.
    scheduler = Scheduler(BatchModel(max_num_seqs=16))
    sequences = [sequence(scheduler, f"s{i}", tokens=1000) for i in range(8)]
    for seq in sequences:
        scheduler.submit(seq)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def consume(seq: ScheduledSequence) -> list[int]:
        texts: list[str] = []
        batches: list[int] = []
        async for delta in seq:
            more = seq.take_ready()
            texts += [delta.text, *(d.text for d in more)]
            batches.append(1 + len(more))
        assert texts == [f" t{i}" for i in range(1000)]
        return batches

    ticking = asyncio.create_task(ticker())
    try:
        batches = await asyncio.wait_for(asyncio.gather(*map(consume, sequences)), 10)
    finally:
        ticking.cancel()
    # 8,000 tokens in a few hundred writes at most, not 8,000.
    assert sum(len(b) for b in batches) <= 8 * 20
    # The loop yielded to other work while it ran: at least once per 2,048 tokens.
    assert ticks >= 8000 // 2048
    await scheduler.aclose()


async def test_take_ready_carries_the_cached_prompt_count_and_nothing_after_abort(
    clock: asyncio.AbstractEventLoop,
) -> None:
    scheduler = Scheduler(BatchModel(inter_token_latency_ms=0))
    prompt = [f"p{i}" for i in range(2 * BLOCK_TOKENS)]
    first = ScheduledSequence(scheduler, plan=planned([" a", " b"], "length"), prompt=list(prompt))
    scheduler.submit(first)
    assert [d.text async for d in first] == [" a", " b"]
    second = ScheduledSequence(
        scheduler, plan=planned([" a", " b", " c"], "length"), prompt=list(prompt)
    )
    scheduler.submit(second)
    await asyncio.sleep(0.001)  # its steps have run: every token is ready
    ready = second.take_ready()
    assert [d.text for d in ready] == [" a", " b", " c"]
    assert ready[0].cached_prompt_tokens == second.cached_tokens > 0
    assert second.take_ready() == []
    third = sequence(scheduler, "c", tokens=5)
    scheduler.submit(third)
    await third.aclose()
    assert third.take_ready() == []
    await scheduler.aclose()


async def test_a_plan_that_fails_ends_its_own_stream_not_the_step_loop(
    clock: asyncio.AbstractEventLoop,
) -> None:
    # A sequence's deltas are made in the step loop as it hands them on: one plan's
    # failure is that stream's error, and the other streams go on.
    class Broken(DeltaList):
        def __iter__(self) -> Iterator[TokenDelta]:
            yield TokenDelta(" fine")
            raise RuntimeError("a planner bug")

    scheduler = Scheduler(BatchModel(inter_token_latency_ms=10))
    broken = ScheduledSequence(
        scheduler, plan=Broken([TokenDelta(" fine"), TokenDelta(" never", "stop")]), prompt=["x"]
    )
    healthy = sequence(scheduler, "healthy", tokens=3)
    scheduler.submit(broken)
    scheduler.submit(healthy)

    async def read(seq: ScheduledSequence) -> list[str]:
        return [delta.text async for delta in seq]

    outcome = await asyncio.gather(read(broken), read(healthy), return_exceptions=True)
    assert isinstance(outcome[0], APIError)
    assert outcome[1] == [" t0", " t1", " t2"]
    await scheduler.aclose()
