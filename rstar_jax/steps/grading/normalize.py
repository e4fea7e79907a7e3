r"""Stage 2 of grading: the MATH-style normal form of one answer string (``normalize_answer``),
and the whitespace-free key two normal forms are compared by. The package docstring lists what
normalisation does and the liberties it takes (units, "x =" prefixes, degrees)."""

from __future__ import annotations

import functools
import re

from rstar_jax.steps.format import closing_brace, extract_boxed
from rstar_jax.steps.grading.brackets import split_top

MAX_INPUT_CHARS = 10_000  # longer: exact match only
CACHE_MAX_CHARS = 1_000  # longer strings are not cached (bounded memory)


def last_boxed(s: str) -> str:
    """Content of the last \\boxed{...} / \\fbox{...}, or s itself."""
    boxed = extract_boxed(s)
    return s if boxed is None else boxed


_TEXT_CMD = re.compile(
    r"\\(?:text(?:normal|bf|it|rm|sf|tt|up)?|mbox|mathrm|mathbf|mathit|mathsf)\s*(?=\{)"
)
_UNIT_CMD = re.compile(r"\\(?:text(?:normal|rm|up)?|mbox|mathrm)\s*$")
_UNIT_CHARS = re.compile(r"^[A-Za-z~\s.\-/^{}\d]*$")
_SUPERSCRIPT_TAIL = re.compile(r"^\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$")
_SINGLE_LETTER_UNITS = set("mgshlLNJWVK")
_GLUED_UNITS = (
    r"cm|mm|km|kg|mg|ml|mL|ft|yd|mph|kph|km/h|m/s|sec|min|hrs?|lbs?|oz|sq\s*ft|sq\s*m|"
    r"units?|cents?|dollars?|degrees?|inches|meters?|metres?"
)
_GLUED_UNIT_RE = re.compile(
    rf"^(?P<val>[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s*(?:{_GLUED_UNITS})"
    r"\s*(?:\^\s*\{?[23]\}?)?$"
)
_UNIT_TOKEN = re.compile(r"^[A-Za-z]+(?:[.\-/][A-Za-z]*)*(?:\^\{?[23]\}?)?$")
_DEGREES = re.compile(
    r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree|\s+degrees?|(?<=\d)degrees?)"
    r"\s*(?=$|,|\))"
)
_SET_BUILDER = re.compile(r"^\\\{\s*[A-Za-z]\s*(?:\||\\mid)\s*(.+)\\\}$")
_INNER_DEGREES = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ)")
_PREFIX_VAR = re.compile(
    r"^\s*(?:[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?(?:\s*\(\s*[a-z]\s*\))?|\\[A-Za-z]+)"
    r"\s*=(?![=<>])\s*"
)
_PREFIX_IN = re.compile(r"^\s*[A-Za-z]\s*\\in(?![A-Za-z])\s*")
_SPACING = re.compile(r"(?<!\\)\\[,;:> ]|\\q?quad\b|~|\\displaystyle|\\textstyle")
_LEFT_RIGHT = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*(\.)?"
)
_FRAC_SHORT = [
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*(?=\{)"), r"\\frac{\1}"),
    (re.compile(r"\\frac\s*(\\[A-Za-z]+)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"(\\frac\s*\{[^{}]*\})\s*(\d|\\[A-Za-z]+|[A-Za-z])"), r"\1{\2}"),
    (re.compile(r"\\sqrt\s*(\d|\\[A-Za-z]+|[A-Za-z])"), r"\\sqrt{\1}"),
]


def _strip_text_groups(s: str) -> str:
    r"""Drop trailing unit-like \text{..} groups after some content; unwrap all other ones."""
    for _ in range(3):  # "5 \text{ m}/\text{s}" style tails, at most a few
        matches = list(_TEXT_CMD.finditer(s))
        if not matches:
            break
        m = matches[-1]
        close = closing_brace(s, m.end() + 1)
        if close is None:
            break
        content = s[m.end() + 1 : close]
        before = s[: m.start()].strip()
        if (
            before
            and _UNIT_CMD.match(s[m.start() : m.end()])
            and _SUPERSCRIPT_TAIL.match(s[close + 1 :])
            and _is_unit_words(content)
            and not before.endswith(("=", "(", ",", "{", "+", "-"))
        ):
            s = before.rstrip("/\\ ")
            continue
        break
    out, pos = [], 0
    for m in _TEXT_CMD.finditer(s):
        if m.start() < pos:
            continue
        close = closing_brace(s, m.end() + 1)
        if close is None:
            break
        out.append(s[pos : m.start()])
        out.append(s[m.end() + 1 : close])
        pos = close + 1
    out.append(s[pos:])
    return "".join(out)


def _is_unit_words(text: str) -> bool:
    """Words that read like a unit: "cm", " square units", "m/s", "~kg"; not "i", "and"."""
    if not _UNIT_CHARS.match(text):
        return False
    words = re.findall(r"[A-Za-z]+", text)
    return bool(words) and all(
        (len(w) > 1 or w in _SINGLE_LETTER_UNITS) and w.lower() not in ("and", "or") for w in words
    )


def _strip_trailing_units(s: str) -> str:
    """ "5 cm", "99\\pi square inches", "22.1cm^2" -> the value. The value must have no bare
    letters (letters only inside \\commands) and end like a number."""
    m = _GLUED_UNIT_RE.match(s)
    if m:
        return m.group("val")
    tokens = s.split(" ")
    k = len(tokens)
    while k > 1 and (_UNIT_TOKEN.match(tokens[k - 1]) or (  # "N - m": a joiner between unit words
            tokens[k - 1] in ("-", "/") and k > 2 and _UNIT_TOKEN.match(tokens[k - 2]))):
        k -= 1
    value, unit = " ".join(tokens[:k]), " ".join(tokens[k:])
    bare = re.sub(r"\\[A-Za-z]+", "", value)
    if (unit and _is_unit_words(unit) and not re.search(r"[A-Za-z]", bare)
            and re.search(r"(?:\d|\\pi|\})\s*%?$", value)):
        return value
    return s


def normalize_answer(answer: str) -> str:
    r"""MATH-style normal form of one answer string ("" for non-strings or inputs over
    ``MAX_INPUT_CHARS``). Meaning-preserving up to the deliberate liberties documented in the
    package docstring (units, "x =" prefixes, degrees dropped; percent kept as a trailing %)."""
    if not isinstance(answer, str) or len(answer) > MAX_INPUT_CHARS:
        return ""
    if len(answer) > CACHE_MAX_CHARS:
        return normalize_uncached(answer)
    return normalize_cached(answer)


def normalize_uncached(answer: str) -> str:
    """normalize_answer without its cache and its checks of the input."""
    s = last_boxed(answer.strip())
    s = s.replace("\n", " ").replace("\t", " ").replace("\r", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"^\\[\[(]|\\[\])]$", "", s.strip())
    s = s.replace("\\!", "")
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\s+", " ", s)  # early: single spaces keep the \s* patterns below linear
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\(?:leqslant|leq)(?![A-Za-z])", r"\\le", s)
    s = re.sub(r"\\(?:geqslant|geq)(?![A-Za-z])", r"\\ge", s)
    s = re.sub(r"\\(?:neq)(?![A-Za-z])", r"\\ne", s)
    s = re.sub(r"\\(?:varnothing)(?![A-Za-z])", r"\\emptyset", s)
    s = re.sub(r"\\infinity|(?<![\\A-Za-z])inf(?:inity)?(?![A-Za-z])", r"\\infty", s)
    s = re.sub(r"\+\s*\\infty", r"\\infty", s)
    if not re.search(r"\\(?:sin|cos|tan|cot|sec|csc)(?![a-z])", s):
        s = _DEGREES.sub("", s)  # "60^\circ" is the number 60 ...
    s = _INNER_DEGREES.sub(r"(\\frac{\1\\pi}{180})", s)  # ... but in "\sin 45^\circ" it is pi/4
    s = re.sub(r"\\%|\s*\bper\s?cent(?:age)?\b", "%", s)
    s = s.replace("{,}", ",")
    s = _strip_text_groups(s)
    s = re.sub(r"^\s*\\approx", "", s)
    m = _SET_BUILDER.match(s.strip())
    if m and split_top(m.group(1)) == [m.group(1).strip()]:  # {x | x > 0} -> x > 0
        s = m.group(1)
    s = re.sub(r"\s+", " ", s).strip()
    if re.search(r"\S\s+(?:and|or)\s+\S", s):
        s = re.sub(r"\s*(?:,\s*)?\b(?:and|or)\b\s*", ", ", s)
    if s.count("=") == 1:
        s = _PREFIX_VAR.sub("", s, count=1)
    s = _PREFIX_IN.sub("", s, count=1)
    s = _strip_trailing_units(s)
    for pattern, repl in _FRAC_SHORT:
        s = pattern.sub(repl, s)
    s = s.strip().rstrip(".").strip()
    if s.startswith("+") and len(s) > 1:
        s = s[1:]
    return s


normalize_cached = functools.lru_cache(maxsize=16384)(normalize_uncached)


def key(s: str) -> str:
    """s with all whitespace removed: two normal forms with the same key are equal."""
    return re.sub(r"\s+", "", s)
