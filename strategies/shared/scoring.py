"""Numbers strategies read off generations: judgement probabilities, entropy, path
probability, parsed scores, reasoning steps. Pure functions, no I/O.

Every function that reads logprobs returns ``None`` when the server sent none, so a
caller can fall back (and trace that it did) rather than mistake "no data" for 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from strategies.protocol import Choice, TokenLogprob

YES_WORDS = frozenset({"yes", "correct", "true", "valid", "right", "accept"})
NO_WORDS = frozenset({"no", "incorrect", "false", "invalid", "wrong", "reject"})

# Markdown and whitespace a judge may emit before its verdict ("**Yes**", " Yes").
_DECORATION = re.compile(r"^[\s*_`#>\"'(\[:-]*$")


def _word(token: str) -> str:
    return token.strip().strip("*_`\"'.,:;!()[]").lower()


def judgement_position(tokens: Sequence[TokenLogprob]) -> int | None:
    """Index of the first token that carries a word (skipping markdown and spaces)."""
    for i, token in enumerate(tokens):
        if not _DECORATION.match(token.token):
            return i
    return None


def yes_probability(
    choice: Choice,
    yes: Iterable[str] = YES_WORDS,
    no: Iterable[str] = NO_WORDS,
) -> float | None:
    """P(the judge's verdict is "yes"), read from the verdict token's top logprobs.

    The verdict token is the first non-decoration token. Its sampled token and top
    alternatives are summed by class (case and markdown ignored: "Yes", " yes",
    "**YES"). If the alternatives show both classes the probability is renormalised
    over yes + no, so mass on unrelated tokens ("The", "I") does not dilute the score;
    with only one class visible, the visible mass is taken as it is (a "No" at
    p = 0.9 scores 0.1 = 1 - 0.9). ``None`` without logprobs or without any verdict word.
    """
    if not choice.tokens:
        return None
    at = judgement_position(choice.tokens)
    if at is None:
        return None
    token = choice.tokens[at]
    pairs = token.top or [(token.token, token.logprob)]
    if all(t != token.token for t, _ in pairs):
        pairs = [(token.token, token.logprob), *pairs]
    yes_set, no_set = {w.lower() for w in yes}, {w.lower() for w in no}
    p_yes = sum(math.exp(lp) for t, lp in pairs if _word(t) in yes_set)
    p_no = sum(math.exp(lp) for t, lp in pairs if _word(t) in no_set)
    if p_yes > 0 and p_no > 0:
        return p_yes / (p_yes + p_no)
    if p_yes > 0:
        return min(p_yes, 1.0)
    if p_no > 0:
        return max(1.0 - p_no, 0.0)
    return None


_SCORE_PATTERNS = [
    # "Score: 7/10", "score = 0.8", "Rating: 4 out of 5"
    re.compile(
        r"(?:score|rating|grade)\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)"
        r"\s*(?:/|out of)\s*(\d+(?:\.\d+)?)",
        re.I,
    ),
    re.compile(r"(?:score|rating|grade)\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.I),
]
_VERDICT = re.compile(r"\b(yes|no|correct|incorrect|true|false|valid|invalid|wrong|right)\b", re.I)


def parse_score(text: str, scale: float = 10.0) -> float | None:
    """A score in [0, 1] parsed from a judge's text, or ``None``.

    ``Score: 7/10`` -> 0.7; ``score: 0.8`` -> 0.8 (a bare number <= 1 is a probability,
    above 1 it is out of ``scale``); otherwise the first verdict word decides (yes /
    correct -> 1.0, no / incorrect -> 0.0).
    """
    out_of = _SCORE_PATTERNS[0].search(text)
    if out_of:
        value, top = float(out_of.group(1)), float(out_of.group(2))
        return min(max(value / top, 0.0), 1.0) if top > 0 else None
    bare = _SCORE_PATTERNS[1].search(text)
    if bare:
        value = float(bare.group(1))
        return min(max(value if value <= 1.0 else value / scale, 0.0), 1.0)
    verdict = _VERDICT.search(text)
    if verdict:
        return 1.0 if verdict.group(1).lower() in YES_WORDS else 0.0
    return None


def entropy(top: Sequence[tuple[str, float]]) -> float:
    """Shannon entropy in nats of a top-k distribution, renormalised over its k entries.

    GlimpRouter's signal: a small model that is unsure how to begin a step spreads its
    first-token probability; renormalising over the reported alternatives makes the
    value comparable across servers that report different k.
    """
    probs = [math.exp(lp) for _, lp in top]
    total = sum(probs)
    if total <= 0:
        return 0.0
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)


def first_token_entropy(choice: Choice) -> float | None:
    """Entropy of the first generated token's alternatives; ``None`` without logprobs."""
    if not choice.tokens or not choice.tokens[0].top:
        return None
    return entropy(choice.tokens[0].top)


@dataclass(frozen=True)
class PathProbability:
    """Log-probability of a sampled path, from its token logprobs."""

    total: float
    tokens: int

    @property
    def mean(self) -> float:
        """Mean token logprob (length-normalised; log of the inverse perplexity)."""
        return self.total / self.tokens if self.tokens else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean)


def path_probability(choice: Choice) -> PathProbability | None:
    if choice.tokens is None:
        return None
    return PathProbability(sum(t.logprob for t in choice.tokens), len(choice.tokens))


STEP_DELIMITER = "\n\n"


def split_steps(text: str, delimiter: str = STEP_DELIMITER) -> list[str]:
    """Reasoning steps: the text split at ``delimiter``, empty pieces dropped."""
    return [s for s in (p.strip() for p in text.split(delimiter)) if s]
