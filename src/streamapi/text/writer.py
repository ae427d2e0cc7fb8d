"""The simulator's answer writer: a structured, on-topic answer with no model.

The answer names the subject of the last user message, builds on its key
terms, and is laid out as a real assistant's would be: an opening paragraph,
a short list of key points, paragraphs on practice and pitfalls, and a
summary. Every choice comes from a seeded ``random.Random``, so equal inputs
give equal answers.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Sequence

from streamapi.text.memo import per_text

_WORD = re.compile(r"[^\W\d_][\w+#'-]*")
# The same for ASCII text, where its classes are ASCII sets (faster to match).
_ASCII_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_+#'-]*")
_LEADING_ASKS = re.compile(
    r"^(?:(?:please|kindly|hey|hi|hello|so|ok|okay)[,!]?\s+)*"
    r"(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:explain|describe|summari[sz]e|discuss|outline|compare|define|teach me|show me|"
    r"tell me (?:about|how|why|what)|write (?:about|an? \w+ (?:about|on))|"
    r"write (?:me )?an? (?:summary|overview|essay|paragraph|article|note|description) "
    r"(?:of|on|about)|"
    r"give (?:me )?(?:an? )?(?:overview|summary|introduction|explanation) (?:of|on|about)|"
    r"what (?:is|are|was|were|does|do)|how (?:does|do|can|should|to|is|are)|"
    r"why (?:is|are|does|do|should)|help me (?:understand|with))?\s*",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just me more most my myself no nor not now of off on once
    only or other our ours out over own same she should so some such than that the their
    theirs them then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself
    explain describe tell give show write please help understand overview summary example
    examples thing things something make made use using used want need like know way ways
    many much well really quite just prompt test work works""".split()
)
# Words are cut to this length, so a pathological prompt cannot blow up the answer.
_LONGEST_TERM = 24
_FALLBACK_TERMS = ("the core idea", "practical use", "trade-offs", "quality", "clarity")


def write_answer(
    question: str, rng: random.Random, *, min_chars: int, max_chars: int | None = None
) -> str:
    """An answer of at least ``min_chars`` characters about ``question``.

    With ``max_chars``, only the answer's beginning, at least ``max_chars`` long (or the
    whole answer, if shorter): the rest is not written, and the draws it would have made
    from ``rng`` are not made. A caller that reads no more than that (an answer capped by
    ``max_tokens``) gets the same text for less work.
    """
    subject = find_subject(question)
    terms = key_terms(question, subject)
    fill = _Filler(subject, terms, rng)
    parts = [
        fill(rng.choice(_OPENINGS)),
        fill(rng.choice(_LIST_HEADINGS)),
        "\n".join(fill(line) for line in _points(rng, len(terms))),
    ]
    # Parts are added in the order they are written, the closing last: each beginning
    # returned below is the start of the whole answer.
    enough = math.inf if max_chars is None else max_chars + 2
    if _length(parts) >= enough:
        return "\n\n".join(parts)
    parts.append(fill(rng.choice(_PRACTICE)))
    extras = list(_EXTRAS)
    rng.shuffle(extras)
    closing = fill(rng.choice(_CLOSINGS))
    while extras and _length(parts) + len(closing) < min_chars:
        if _length(parts) >= enough:
            return "\n\n".join(parts)
        parts.append(fill(extras.pop()))
    while _length(parts) + len(closing) < min_chars:
        if _length(parts) >= enough:
            return "\n\n".join(parts)
        parts.append(fill(rng.choice(_EXTRAS)))
    parts.append(closing)
    return "\n\n".join(parts)


# What find_subject cuts: the first sentence, an article, a closing verb.
_FIRST_SENTENCE = re.compile(r"(?<=[.?!])\s|\n")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_CLOSING_VERBS = ("work", "works", "mean", "means", "matter")
_CLOSING_VERB = re.compile(rf"\s+(?:{'|'.join(_CLOSING_VERBS)})$", re.IGNORECASE)


@per_text()
def find_subject(question: str) -> str:
    """The subject of a request: its first sentence without the asking words."""
    first = question.strip()
    # A sentence ends at a newline, or at a space after ".", "?" or "!": a question with
    # none of those is its own first sentence, and is not searched.
    if any(mark in first for mark in ".?!\n"):
        first = _FIRST_SENTENCE.split(first, maxsplit=1)[0]
    first = _LEADING_ASKS.sub("", first).strip(" \t.?!:;,\"'`")
    first = _ARTICLE.sub("", first)
    # An ASCII text that does not end with a closing verb (in any case) is not searched.
    if not first.isascii() or first.lower().endswith(_CLOSING_VERBS):
        first = _CLOSING_VERB.sub("", first)
    words = [word[:_LONGEST_TERM] for word in first.split()[:8]]
    return " ".join(words) if words else "this topic"


def key_terms(question: str, subject: str, *, limit: int = 5) -> list[str]:
    """The request's most telling words: frequent, long, and not stop words."""
    terms = list(_ranked_terms(question)[:limit])
    for fallback in _FALLBACK_TERMS:
        if len(terms) >= 3:
            break
        if fallback not in terms and fallback != subject.lower():
            terms.append(fallback)
    return terms


@per_text()
def _ranked_terms(question: str) -> tuple[str, ...]:
    """The words of ``question`` that are not stop words, most telling first (a text
    read again, such as a tool's description or a repeated prompt, is ranked once)."""
    counts: dict[str, int] = {}
    spelled: dict[str, str] = {}  # each word as first written, in order of first use
    lengths: dict[str, int] = {}  # its length, up to 9
    for found in _words(question):
        term = _term(found) if len(found) <= _LONGEST_TERM else _term.__wrapped__(found)
        if term is None:
            continue
        lowered, word, stop = term
        if lowered in counts:
            counts[lowered] += 1
        elif not stop:
            counts[lowered] = 1
            spelled[lowered] = word
            lengths[lowered] = min(len(lowered), 9)
    # Most used, then longest (up to 9 letters), then first used: two stable sorts, the
    # second one's key first (reverse keeps equal keys in order).
    ranked = sorted(spelled, key=lengths.__getitem__, reverse=True)
    ranked.sort(key=counts.__getitem__, reverse=True)
    return tuple([spelled[w] for w in ranked])


@functools.lru_cache(maxsize=2048)
def _term(found: str) -> tuple[str, str, bool] | None:
    """A word as a term: its key (lower case), its spelling, whether it is a stop word;
    None if it is no term. Words recur across prompts, so each is read once."""
    word = found.strip("'-")[:_LONGEST_TERM]
    # Contractions ("what's", "don't") are grammar, not subject matter.
    if len(word) <= 2 or "'" in word:
        return None
    lowered = word.lower()
    return lowered, word, lowered in _STOPWORDS


def _words(text: str) -> list[str]:
    """The words of ``text`` (``_WORD``)."""
    return (_ASCII_WORD if text.isascii() else _WORD).findall(text)


def _length(parts: list[str]) -> int:
    return sum(len(part) + 2 for part in parts)


def _points(rng: random.Random, n_terms: int) -> list[str]:
    templates = rng.sample(_POINTS, k=n_terms)
    return [f"- {t.replace('{t}', '{t' + str(i) + '}')}" for i, t in enumerate(templates)]


class _Filler:
    def __init__(self, subject: str, terms: list[str], rng: random.Random) -> None:
        self._values = {"subject": subject, "Subject": subject[:1].upper() + subject[1:]}
        rest = terms[1:]
        rng.shuffle(rest)
        for i, term in enumerate([terms[0], *rest, *rest, *rest][:5]):
            self._values[f"t{i}"] = term

    def __call__(self, template: str) -> str:
        return template.format_map(self._values)


_OPENINGS = (
    "{Subject} is a subject where a clear structure pays off quickly. The short answer is "
    "that it rests on a few ideas, chiefly {t0} and {t1}, and that most of the practical "
    "questions follow once those are understood. Below is an overview of what matters, how "
    "it is used, and where people usually go wrong.",
    "Here is a structured overview of {subject}. At its heart are {t0} and {t1}: get those "
    "right and the rest of the picture falls into place. The sections below cover the key "
    "points, how they apply in practice, and the trade-offs worth keeping in mind.",
    "Good question. {Subject} comes up often, and it is easiest to understand by starting "
    "from {t0}, then seeing how {t1} and {t2} build on it. This answer walks through the "
    "essentials first and then turns to practical advice.",
    "{Subject} can be approached from several angles, but the most useful one starts with "
    "{t0}. From there, {t1} explains much of the behaviour you will see in practice, and "
    "{t2} shapes the decisions you will have to make.",
)
_LIST_HEADINGS = (
    "Key points:",
    "The essentials:",
    "What to keep in mind:",
)
# A list, not a tuple: ``Random.sample`` checks that its population is a Sequence, and
# CPython caches that answer for list (registered with MutableSequence) but not for
# tuple (registered with Sequence itself), which costs a Python-level
# ``ABCMeta.__subclasscheck__`` call per sample. The samples drawn are the same.
_POINTS = [
    "**{t}**: define it precisely before relying on it; most confusion comes from vague "
    "assumptions here.",
    "**{t}**: measure it instead of guessing, and keep the measurements next to the design "
    "decisions they justify.",
    "**{t}**: it interacts with the rest of the system, so change it deliberately and one "
    "step at a time.",
    "**{t}**: start with the simplest version that works, then refine it where evidence "
    "shows a need.",
    "**{t}**: document the reasoning behind it, not only the outcome, so others can build on it.",
    "**{t}**: plan for failure cases early; they are cheaper to handle by design than by repair.",
]
_PRACTICE = (
    "In practice, the most reliable way to work with {subject} is iterative. Begin with a "
    "small, concrete example that exercises {t0}, verify that it behaves as expected, and "
    "only then extend it toward {t1}. Each step should leave something you can check, so "
    "that problems surface while they are still small and cheap to fix.",
    "Applied to real work, {subject} rewards a disciplined routine: state the goal, pick the "
    "smallest experiment that tests it, and record what happened. Teams that treat {t0} and "
    "{t1} this way tend to move faster, because every decision rests on evidence rather "
    "than on memory or opinion.",
)
_EXTRAS = (
    "A common pitfall is to optimise {t1} before {t0} is well understood. The result often "
    "looks impressive in isolation but behaves poorly once it meets real conditions. It is "
    "better to accept a plain first version and improve it with measurements in hand.",
    "It also helps to think about scale early. What works for one case may not hold for a "
    "thousand, and {t2} is usually where the difference appears first. Planning for growth "
    "does not mean building everything up front; it means knowing which parts will need to "
    "change.",
    "Communication matters as much as technique. When {subject} involves several people, a "
    "shared vocabulary around {t0} and {t1} prevents misunderstandings, and short written "
    "notes on decisions save time when the same questions come back months later.",
    "Finally, consider the trade-offs explicitly. Improving {t1} often costs something in "
    "{t2} or in simplicity, and the right balance depends on the context. Making those "
    "costs visible turns a vague debate into a decision that can be revisited with data.",
    "Testing deserves its own mention. Checks that exercise {t0} under realistic conditions "
    "catch regressions long before users do, and they document the expected behaviour more "
    "precisely than prose can.",
)
_CLOSINGS = (
    "In summary, {subject} is best approached through its foundations: understand {t0}, "
    "treat {t1} as something to measure, and make trade-offs explicit. With that footing, "
    "the remaining details become much easier to reason about.",
    "To sum up: focus first on {t0}, then on how {t1} affects the outcome, and keep "
    "evidence close to every decision. That approach scales from a first experiment to a "
    "mature, dependable practice around {subject}.",
)


def write_reasoning(question: str, rng: random.Random, *, tool_names: Sequence[str] = ()) -> str:
    """A short chain of thought that plans the answer to ``question``."""
    subject = find_subject(question)
    terms = key_terms(question, subject)
    fill = _Filler(subject, terms, rng)
    steps = [fill(rng.choice(_REASONING_OPENINGS))]
    if tool_names:
        names = ", ".join(f"`{name}`" for name in tool_names)
        steps.append(
            f"I don't have the data to answer this directly, so I should call {names} first "
            "and answer from the result."
        )
    else:
        steps.append(fill(rng.choice(_REASONING_PLANS)))
    return " ".join(steps)


def write_tool_answer(
    question: str, results: Sequence[tuple[str, str]], rng: random.Random, *, min_chars: int
) -> str:
    """An answer that reports and builds on tool results (``(tool name, output)`` pairs)."""
    reports = []
    for name, output in results:
        shown = " ".join(output.split())
        shown = shown if len(shown) <= 300 else shown[:297] + "..."
        reports.append(f"- `{name}` returned: {shown}")
    opening = (
        "Here is what the tool call returned:"
        if len(results) == 1
        else f"Here is what the {len(results)} tool calls returned:"
    )
    head = "\n".join([opening, *reports])
    body = write_answer(question, rng, min_chars=max(0, min_chars - len(head) - 2))
    return f"{head}\n\nBased on {'this result' if len(results) == 1 else 'these results'}: {body}"


def json_answer(question: str, rng: random.Random) -> dict[str, object]:
    """An answer shaped as a JSON object, for ``response_format: json_object``."""
    subject = find_subject(question)
    terms = key_terms(question, subject)
    fill = _Filler(subject, terms, rng)
    return {
        "subject": subject,
        "summary": fill(rng.choice(_OPENINGS)).split(". ")[0] + ".",
        "key_points": [
            fill(point.replace("**{t}**", "{t" + str(i) + "}"))
            for i, point in enumerate(rng.sample(_POINTS, k=3))
        ],
        "confidence": round(rng.uniform(0.6, 0.95), 2),
    }


_REASONING_OPENINGS = (
    "The user is asking about {subject}. The key ideas here are {t0} and {t1}.",
    "Let me think about {subject}. What matters most is {t0}, and how {t1} relates to it.",
    "The question is about {subject}; I need to cover {t0} first and then {t1}.",
)
_REASONING_PLANS = (
    "A good answer should start with an overview, list the key points, explain how they "
    "apply in practice, and close with a short summary.",
    "I'll structure it as a brief introduction, a list of essentials, some practical "
    "advice on {t1}, and a conclusion.",
)


def write_brief(
    question: str,
    rng: random.Random,
    *,
    sentences: int | None = None,
    words: int | None = None,
    lead: str = "",
) -> str:
    """A short answer: ``sentences`` sentences, or exactly ``words`` words (2 or more).

    ``lead`` (a note on an image, a tool's result) is its first sentence. One word
    is ``one_word``'s business.
    """
    subject = find_subject(question)
    fill = _Filler(subject, key_terms(question, subject), rng)
    said = [lead] if lead else []
    said.append(fill(rng.choice(_BRIEF_OPENINGS)))
    rest = list(_BRIEF_FOLLOW_UPS)
    rng.shuffle(rest)
    wanted = sentences or 1
    # Bounded: a word count is at most a few thousand, a sentence ten words or more.
    while rest and (len(said) < wanted if words is None else len(" ".join(said).split()) < words):
        said.append(fill(rest.pop()))
        if not rest and words is not None:
            rest = list(_BRIEF_FOLLOW_UPS)
            rng.shuffle(rest)
    if words is None:
        return " ".join(said[:wanted])
    picked = " ".join(said).split()[:words]
    return " ".join(picked).rstrip(".,;:!?") + "."


_BRIEF_OPENINGS = (
    "{Subject} comes down to {t0}, and to how {t1} builds on it.",
    "In short, {subject} rests on {t0}, with {t1} shaping most practical decisions.",
    "The key to {subject} is {t0}; {t1} and {t2} follow from it.",
    "{Subject} is mostly about {t0}, and about keeping {t1} under control.",
)
_BRIEF_FOLLOW_UPS = (
    "In practice, start small with {t0}, check that it works, then extend it toward {t1}.",
    "The usual pitfall is tuning {t1} before {t0} is well understood.",
    "Measure {t2} rather than guessing, and make the trade-offs explicit.",
    "A clear vocabulary around {t0} and {t1} prevents most misunderstandings.",
    "Tests that exercise {t0} under realistic conditions catch problems early.",
    "Scale changes the picture, and {t2} is usually where that shows first.",
)


def one_word(question: str) -> str:
    """The likeliest one-word answer: a proper noun of the question, else its key term."""
    names = [
        word
        for sentence in re.split(r"(?<=[.?!:])\s+", question)
        for word in _words(sentence)[1:]  # a sentence's first word is capitalised anyway
        if word[:1].isupper() and len(word) > 2
    ]
    terms = key_terms(question, find_subject(question))
    word = names[-1] if names else terms[0].split()[0]
    return word[:1].upper() + word[1:]


def image_note(images: int) -> str:
    """The sentence an answer opens with when the user sent images."""
    if images == 1:
        return "The image you shared is a useful starting point."
    return f"The {images} images you shared are a useful starting point."


def proper_nouns(text: str) -> list[str]:
    """The names in ``text`` ("Paris", "New York"), in order, each once.

    A capitalised word opening a sentence or a line is capitalised anyway: it counts only
    when the next word is capitalised too ("New York"), and never when it is a question
    word or another common word ("What", "The"). Consecutive capitalised words make one
    name.
    """
    names: list[str] = []
    for sentence in re.split(r"(?<=[.?!:;])\s+|\n+", text):
        words = _words(sentence)
        run: list[str] = []
        for index, word in enumerate([*words, ""]):
            word = word.strip("'-")
            capital = len(word) > 1 and word[:1].isupper() and word.lower() not in _STOPWORDS
            opening = index == 0 and not (
                len(words) > 1 and words[1][:1].isupper() and words[1].lower() not in _STOPWORDS
            )
            if capital and not opening:
                run.append(word)
                continue
            if run:
                names.append(" ".join(run))
                run = []
    return list(dict.fromkeys(names))


_SAY_HELLO = re.compile(
    r"^\W*(?:please\s+)?(?:say|write|reply with|respond with) (?:hi|hello)\b", re.IGNORECASE
)


def greeting_reply(question: str) -> str | None:
    """The greeting a request asks for ("Say hello in one short sentence."); None otherwise.

    Agent CLIs are smoke-tested this way, and a model greets in one sentence. A bare "hi"
    gets the usual answer: load tests send it and expect a full-length one.
    """
    return "Hello there, it is nice to meet you." if _SAY_HELLO.match(question) else None
