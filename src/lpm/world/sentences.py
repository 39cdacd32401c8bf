"""A small procedural sentence bank for world dialogue: statements, questions, backchannels, laughs.

Sentences are built from templates so clips rarely repeat a line; a few languages beyond English let the
non-English voices speak their own language.
"""

from __future__ import annotations

import numpy as np

_SUBJECTS = ("the weather", "my neighbour", "the new cafe", "this project", "the old bridge", "our garden",
             "the last train", "that movie", "the market", "my sister", "the museum", "the river path")
_PREDICATES = ("was lovely this morning", "is much busier than before", "opened on the corner last week",
               "needs a little more time", "looked beautiful in the rain", "keeps growing every summer",
               "left twenty minutes late again", "made everyone laugh", "sells the best apples in town",
               "finally called me back", "has a new exhibition about boats", "is quiet at sunrise")
_OPENERS = ("You know,", "Honestly,", "I think", "Well,", "Actually,", "So,", "Last week", "Apparently")
_QUESTIONS = ("Have you been to {s} lately?", "What do you think about {s}?", "Did you hear about {s}?",
              "Do you remember {s}?", "Would you like to see {s} with me?", "Is {s} still open on Sundays?",
              "Can you believe it?", "Really, is that true?", "Where did you find it?", "Are you sure about that?")
_EXTRA = ("It reminded me of when we were kids.", "I could talk about it for hours.",
          "We should go there together.", "Nobody expected that.", "It was the best part of my day.",
          "I will tell you more tomorrow.", "That is what I heard, anyway.")

BACKCHANNELS = ("mm-hm", "yeah", "right", "uh-huh", "okay", "I see", "oh", "sure")
LAUGHS = ("ha ha ha", "ha ha", "ha ha ha ha", "he he he")

FOREIGN: dict[str, tuple[str, ...]] = {
    "fr": ("Je suis allé au marché ce matin.", "Il fait très beau aujourd'hui.", "Tu as vu le nouveau film ?",
           "On pourrait se promener près de la rivière.", "C'est vraiment une bonne idée."),
    "de": ("Ich war heute Morgen auf dem Markt.", "Das Wetter ist heute sehr schön.",
           "Hast du den neuen Film gesehen?", "Wir könnten am Fluss spazieren gehen.", "Das ist eine gute Idee."),
    "es": ("Fui al mercado esta mañana.", "Hoy hace muy buen tiempo.", "¿Has visto la nueva película?",
           "Podríamos pasear junto al río.", "Es una idea muy buena."),
}


def statement(rng: np.random.Generator, language: str = "en") -> str:
    """One declarative sentence (one or two clauses)."""
    lang = language.split("-")[0]
    if lang in FOREIGN:
        return str(rng.choice([s for s in FOREIGN[lang] if not s.endswith("?")]))
    s = f"{rng.choice(_OPENERS)} {rng.choice(_SUBJECTS)} {rng.choice(_PREDICATES)}."
    if rng.random() < 0.35:
        s += " " + str(rng.choice(_EXTRA))
    return s


def question(rng: np.random.Generator, language: str = "en") -> str:
    """One question (espeak gives it rising intonation)."""
    lang = language.split("-")[0]
    if lang in FOREIGN:
        return str(rng.choice([s for s in FOREIGN[lang] if s.endswith("?")]))
    return str(rng.choice(_QUESTIONS)).format(s=rng.choice(_SUBJECTS))
