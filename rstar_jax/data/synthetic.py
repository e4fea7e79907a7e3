r"""Synthetic math problems with exact answers and reference solutions, for the tiny CPU world.

Four families, each at levels 1-3. Level 3 takes level 2's steps with numbers drawn from wider
ranges, so most of its problems hold a number past levels 1-2: a model trained on levels 1-2 has
seen every step it needs but not these numbers in these places, and copies them right in some
samples and wrong in others, the frontier a search can push.

- arithmetic: integer expressions of 2 (level 1) or 3-4 (levels 2-3) operations on numbers up to
  20, 50 or 85 (level 3), with parentheses from level 2;
- fractions: sums, differences and products of 2 (level 1) or 3 (levels 2-3) fractions, answered
  in lowest terms; level 3 adds the denominators 11, 13, 14, 18 and 20;
- linear: one linear equation in x with an integer root: `ax + b = d` (level 1), `ax + b = cx + d`
  (level 2), or the same with coefficients up to 25 and `b` up to 99 (level 3; level 2: 12 and
  30; `d` follows from the root);
- word: shopping, ages, travel, production and sharing stories in several wordings; level 2
  adds a sentence with an irrelevant number, level 3 two (the one family whose level 3 keeps
  level 2's numbers).

Every problem carries `metadata["solution"]`: the response a policy would write after the policy
prompt, in the step format (RSTAR.md section 2): numbered code steps with the reasoning as
comments, a last code step that prints the result, the output block the program really prints,
and an answer with `\boxed{}`. Its style is one of the family's ways to solve it, drawn for each
problem (`metadata["style"]`): arithmetic "steps" (products, then the sum in one step), "running"
(the sum one term a step) or "direct" (the whole expression at once); fractions the same three;
linear "left" or "right" (where the x terms are collected) or "sympy" (solved and printed in
LaTeX by sympy). A policy trained on these solves a problem in several ways: what a round's
search can choose between.
`generate` is deterministic in its arguments and never returns two equal questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from fractions import Fraction

import sympy

from rstar_jax.data.problem import Problem
from rstar_jax.data.records import SFTExample
from rstar_jax.steps import format as fmt

FAMILIES = ("arithmetic", "fractions", "linear", "word")
LEVELS = (1, 2, 3)


# --- the solution text ------------------------------------------------------------------------


def latex(value: Fraction | int) -> str:
    """An exact answer as the grader and MATH write it: 7, -3, \\frac{3}{4}, -\\frac{5}{2}."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def solution(steps: Sequence[tuple[str, str]], result: str, printed: str, sentence: str) -> str:
    """The step-format response: code steps (comment, code), a last step printing `result`, its
    output block (`printed`, what Python prints) and an answer sentence around `\\boxed{}`."""
    parts = []
    for i, (comment, code) in enumerate(steps, 1):
        head = f"{fmt.CODE}\n" if i == 1 else "\n\n"
        parts.append(f"{head}# Step {i}: {comment}\n{code}\n{fmt.END_OF_STEP}")
    last = f"\n\n# Now print the final answer\nprint({result})\n{fmt.END_OF_CODE}"
    parts.append(fmt.insert_output(last, printed + "\n"))
    parts.append(f"{fmt.ANSWER}{sentence}{fmt.END_OF_ANSWER}")
    return "".join(parts)


def answer_sentence(answer: str) -> str:
    """The answer step's text, the same in every family: what it holds follows from the output
    block before it, not from the kind of problem."""
    return f"The answer is $\\boxed{{{answer}}}$."


def _printed(value: Fraction | int) -> str:
    return str(Fraction(value)) if Fraction(value).denominator != 1 else str(int(value))


# --- arithmetic -------------------------------------------------------------------------------

_OPS = {"+": (lambda a, b: a + b, "add"), "-": (lambda a, b: a - b, "subtract"),
        "*": (lambda a, b: a * b, "multiply")}


def _evaluate(numbers: Sequence[int], symbols: Sequence[str]) -> int:
    """An expression's value as Python reads it: products first, then left to right."""
    numbers, symbols = list(numbers), list(symbols)
    while "*" in symbols:
        i = symbols.index("*")
        numbers[i:i + 2] = [numbers[i] * numbers[i + 1]]
        del symbols[i]
    total = numbers[0]
    for s, x in zip(symbols, numbers[1:]):
        total = total + x if s == "+" else total - x
    return total


def _arithmetic(rng: random.Random, level: int):
    longer = rng.randint(3, 4)  # drawn at every level, so level 1's problems stay what they were
    ops = 2 if level == 1 else longer
    hi = {1: 20, 2: 50, 3: 85}[level]

    def number():
        return rng.randint(2, hi)

    # Build left to right; from level 2 a random run of terms is grouped in parentheses.
    terms = [number() for _ in range(ops + 1)]
    symbols = [rng.choice("+-*") for _ in range(ops)]
    group = None
    if level >= 2:
        start = rng.randrange(ops)
        group = (start, min(ops, start + rng.randint(1, 2)))  # terms start..end inclusive

    def show(x):
        return f"({x})" if x < 0 else str(x)

    def text(i, j):
        return " ".join([show(terms[i])] + [f"{s} {show(t)}"
                                            for s, t in zip(symbols[i:j], terms[i + 1:j + 1])])

    steps, names = [], [f"v{i}" for i in range(ops + 1)]
    if group:
        i, j = group
        inner = text(i, j)
        steps.append((f"evaluate the parentheses ({inner})", f"group = {inner}"))
        expr_terms = terms[:i] + ["group"] + terms[j + 1:]
        expr_syms = symbols[:i] + symbols[j:]
        shown = text(0, i - 1) + f" {symbols[i - 1]} " if i > 0 else ""
        rest = "".join(f" {s} {show(t)}" for s, t in zip(symbols[j:], terms[j + 1:]))
        question_expr = shown + f"({inner})" + rest
    else:
        expr_terms, expr_syms, question_expr = terms, symbols, text(0, ops)
    values = terms if not group else terms[:i] + [_evaluate(terms[i:j + 1],
                                                            symbols[i:j])] + terms[j + 1:]
    value = _evaluate(values, expr_syms)
    # Multiplications first, one step each; then the sums and differences left to right, in one
    # step ("steps") or one term a step ("running"). Or the whole expression at once ("direct").
    code_terms = [t if t == "group" else show(t) for t in expr_terms]
    k = 0
    while "*" in expr_syms:
        i = expr_syms.index("*")
        name = names[k]
        steps.append((f"multiply {code_terms[i]} by {code_terms[i + 1]}",
                      f"{name} = {code_terms[i]} * {code_terms[i + 1]}"))
        code_terms[i:i + 2] = [name]
        del expr_syms[i]
        k += 1
    running = list(steps)
    if expr_syms:
        rest = " ".join([code_terms[0]] + [f"{s} {t}" for s, t in zip(expr_syms, code_terms[1:])])
        steps.append(("add and subtract from left to right", f"result = {rest}"))
        running.append((f"start with {code_terms[0]} {expr_syms[0]} {code_terms[1]}",
                        f"result = {code_terms[0]} {expr_syms[0]} {code_terms[1]}"))
        running += [(f"{_OPS[s][1]} {t}", f"result = result {s} {t}")
                    for s, t in zip(expr_syms[1:], code_terms[2:])]
    else:
        steps.append(("the result is what is left", f"result = {code_terms[0]}"))
        running.append(("the result is what is left", f"result = {code_terms[0]}"))
    direct = [("evaluate the expression as Python does, products first",
               f"result = {question_expr}")]
    phrasing = rng.choice(["Compute ${e}$.", "What is the value of ${e}$?", "Evaluate ${e}$.",
                           "Find ${e}$.", "Calculate ${e}$."])
    question = phrasing.format(e=question_expr.replace("*", "\\times"))
    sentence = answer_sentence(latex(value))
    return question, value, {name: (s, "result", _printed(value), sentence)
                             for name, s in (("steps", steps), ("running", running),
                                             ("direct", direct))}


# --- fractions --------------------------------------------------------------------------------


def _fractions(rng: random.Random, level: int):
    count = min(level, 2) + 1
    dens = ([2, 3, 4, 5, 6, 8, 9, 10, 12] + ([7, 15, 16] if level > 1 else [])
            + ([11, 13, 14, 18, 20] if level > 2 else []))
    pairs = [(rng.randint(1, d - 1), d)
             for d in (rng.choice(dens) for _ in range(count))]  # as written, not reduced
    fracs = [Fraction(*nd) for nd in pairs]
    ops = [rng.choice("+-" if level == 1 else "+-*") for _ in range(count - 1)]

    def tex(nd):
        return f"\\frac{{{nd[0]}}}{{{nd[1]}}}"

    # Evaluated left to right as written; the question puts parentheses where a product
    # follows a sum, so its usual reading is the same.
    steps = [("write the fractions exactly", "from fractions import Fraction\n"
              + "\n".join(f"f{i} = Fraction({n}, {d})" for i, (n, d) in enumerate(pairs)))]
    value, acc, expr = fracs[0], "f0", tex(pairs[0])
    code = "Fraction({}, {})".format  # noqa: UP032 (a template, called with a pair)
    direct = code(*pairs[0])
    running = [("start with the first fraction",
                f"from fractions import Fraction\nresult = {direct}")]
    word = {"+": "add", "-": "subtract", "*": "multiply by"}
    sign = {"+": "+", "-": "-", "*": "\\times"}
    for i, op in enumerate(ops, 1):
        value = _OPS[op][0](value, fracs[i])
        steps.append((f"{word[op]} f{i}, reducing the result", f"r{i} = {acc} {op} f{i}"))
        running.append((f"{word[op]} {pairs[i][0]}/{pairs[i][1]}",
                        f"result = result {op} {code(*pairs[i])}"))
        acc = f"r{i}"
        if op == "*" and any(o in "+-" for o in ops[:i - 1]):
            expr, direct = f"\\left({expr}\\right)", f"({direct})"
        expr += f" {sign[op]} {tex(pairs[i])}"
        direct += f" {op} {code(*pairs[i])}"
    phrasing = rng.choice(["Compute ${e}$ and write the answer as a fraction in lowest terms.",
                           "What is ${e}$? Give your answer in simplest form.",
                           "Simplify ${e}$."])
    sentence = answer_sentence(latex(value))
    direct = [("write the expression with exact fractions",
               f"from fractions import Fraction\nresult = {direct}")]
    return phrasing.format(e=expr), value, {"steps": (steps, acc, _printed(value), sentence),
                                            "running": (running, "result", _printed(value),
                                                        sentence),
                                            "direct": (direct, "result", _printed(value), sentence)}


# --- linear equations -------------------------------------------------------------------------


def _linear(rng: random.Random, level: int):
    def nz(lo, hi):
        x = 0
        while x == 0:
            x = rng.randint(lo, hi)
        return x

    if level == 1:
        a, root = nz(2, 9), rng.randint(-10, 15)
        b = rng.randint(-20, 20)
        c, d = 0, a * root + b
    else:  # levels 2-3; level 3 draws the coefficients and b from wider ranges
        top, wide = (12, 30) if level == 2 else (25, 99)
        a, c, root = nz(2, top), nz(1, top), rng.randint(-12, 12)
        while c == a:
            c = nz(1, top)
        b = rng.randint(-wide, wide)
        d = (a - c) * root + b
    root = Fraction(d - b, a - c)

    def side(coef, const):
        if not coef:
            return str(const)
        if coef == 1:
            lead = "x"
        elif coef == -1:
            lead = "-x"
        else:
            lead = f"{coef}x"
        return lead + _plus(const)

    equation = f"{side(a, b)} = {side(c, d)}"
    divide = ("divide both sides by the coefficient of x",
              "from fractions import Fraction\nx = Fraction(constant, coefficient)")
    left = [("collect the x terms on the left and the constants on the right",
             f"coefficient = {a} - ({c})\nconstant = {d} - ({b})"), divide]
    right = [("collect the x terms on the right and the constants on the left",
              f"coefficient = {c} - ({a})\nconstant = {b} - ({d})"), divide]
    # sympy solves it and writes the root in LaTeX; the answer repeats what it printed.
    printed = sympy.latex(sympy.Rational(root.numerator, root.denominator))
    solve = [("solve the equation with sympy",
              "from sympy import Eq, latex, solve, symbols\nx = symbols('x')\n"
              f"root = solve(Eq({_poly(a, b)}, {_poly(c, d)}), x)[0]")]
    phrasing = rng.choice(["Solve for $x$: ${e}$.", "Find $x$ if ${e}$.",
                           "What value of $x$ satisfies ${e}$?"])
    sentence = answer_sentence(latex(root))
    return phrasing.format(e=equation), root, {"left": (left, "x", _printed(root), sentence),
                                               "right": (right, "x", _printed(root), sentence),
                                               "sympy": (solve, "latex(root)", printed,
                                                         answer_sentence(printed))}


def _plus(const) -> str:
    """A constant after another term: " + 3", " - 3", or nothing for 0."""
    if const > 0:
        return f" + {const}"
    return f" - {-const}" if const < 0 else ""


def _poly(coef: int, const: int) -> str:
    """`coef*x + const` as Python code: 4*x - 14."""
    return f"{coef}*x" + _plus(const)


# --- word problems ----------------------------------------------------------------------------

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Liam", "Maya", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq")
ITEMS = (("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"),
         ("ticket", "tickets"), ("sticker", "stickers"), ("book", "books"), ("cupcake", "cupcakes"),
         ("marble", "marbles"))
DISTRACTORS = ("The shop has been open for {n} years.", "{name} has {n} cousins.",
               "It was {n} degrees outside that day.", "The bus ride took {n} minutes.",
               "{name}'s house number is {n}.")

# A story: (rng, name) -> (sentences, question, steps, result variable, value).
Story = Callable[[random.Random, str], tuple]


def _shopping(rng, name):
    (item, items), price = rng.choice(ITEMS), rng.randint(2, 15)
    count = rng.randint(2, 12)
    paid = (count * price // 10 + 1 + rng.randint(0, 3)) * 10
    sentences = [rng.choice([f"{name} buys {count} {items} that cost {price} dollars each.",
                             f"{name} needs {count} {items}, and each {item} costs {price} "
                             "dollars."]),
                 f"{name} pays with {paid} dollars."]
    steps = [(f"the {items} cost {count} times {price} dollars", f"cost = {count} * {price}"),
             (f"the change is what is left of {paid} dollars", f"change = {paid} - cost")]
    question = f"How much change, in dollars, does {name} get?"
    return sentences, question, steps, "change", paid - count * price


def _ages(rng, name):
    other = rng.choice([n for n in NAMES if n != name])
    years, young = rng.randint(2, 10), rng.randint(3, 30)
    gap = rng.randint(2, 15)
    total = 2 * young + gap + 2 * years
    sentences = [f"{name} is {gap} years older than {other}.",
                 f"In {years} years, the sum of their ages will be {total}."]
    steps = [(f"in {years} years both are {years} years older, so today the sum is {total} - 2 * "
              f"{years}",
              f"sum_now = {total} - 2 * {years}"),
             (f"{other}'s age twice plus {gap} is that sum", f"age = (sum_now - {gap}) // 2")]
    return sentences, f"How old is {other} now?", steps, "age", young


def _travel(rng, name):
    speed, speed2, hours2 = rng.randint(3, 12) * 5, 0, rng.randint(1, 4)
    speed2 = speed + rng.randint(1, 4) * 5
    hours = rng.randint(2, 6)
    sentences = [f"{name} drives for {hours} hours at {speed} km per hour,",
                 f"then for {hours2} hours at {speed2} km per hour."]
    steps = [("distance of the first part is speed times time", f"first = {speed} * {hours}"),
             ("distance of the second part", f"second = {speed2} * {hours2}"),
             ("add the two parts", "distance = first + second")]
    question = f"How many kilometres does {name} drive in total?"
    return sentences, question, steps, "distance", speed * hours + speed2 * hours2


def _production(rng, name):
    per_hour, hours = rng.randint(3, 20), rng.randint(2, 8)
    days = rng.randint(2, 6)
    broken = rng.randint(1, per_hour * hours - 1)
    sentences = [f"A machine run by {name} makes {per_hour} toys an hour for {hours} hours a day.",
                 f"Each day {broken} of the toys it makes are broken and thrown away."]
    steps = [("toys made in one day", f"made = {per_hour} * {hours}"),
             ("good toys in one day", f"good = made - {broken}"),
             (f"good toys in {days} days", f"total = good * {days}")]
    question = f"How many good toys does it make in {days} days?"
    return sentences, question, steps, "total", (per_hour * hours - broken) * days


def _sharing(rng, name):
    _, items = rng.choice(ITEMS)
    friends, each = rng.randint(2, 6), rng.randint(2, 12)
    kept = rng.randint(1, 9)
    total = friends * each + kept
    sentences = [f"{name} has {total} {items}.",
                 f"{name} keeps {kept} and shares the rest equally among {friends} friends."]
    steps = [(f"{items} to share", f"to_share = {total} - {kept}"),
             ("each friend's share", f"share = to_share // {friends}")]
    return sentences, f"How many {items} does each friend get?", steps, "share", each


STORIES: dict[str, Story] = {"shopping": _shopping, "ages": _ages, "travel": _travel,
                             "production": _production, "sharing": _sharing}


def _word(rng: random.Random, level: int):
    name = rng.choice(NAMES)
    first = rng.choice(sorted(STORIES))
    sentences, question, steps, result, value = STORIES[first](rng, name)
    for _ in range(level - 1):  # sentences with numbers that do not matter
        sentences.insert(rng.randrange(len(sentences) + 1),
                         rng.choice(DISTRACTORS).format(n=rng.randint(3, 60), name=name))
    return " ".join([*sentences, question]), value, {"steps": (steps, result, _printed(value),
                                                               answer_sentence(latex(value)))}


_MAKERS = {"arithmetic": _arithmetic, "fractions": _fractions, "linear": _linear, "word": _word}


# --- the generator ----------------------------------------------------------------------------


def generate(n: int, seed: int = 0, levels: Sequence[int] = LEVELS,
             families: Sequence[str] | None = None
             ) -> list[Problem]:
    """`n` distinct problems, families and levels in turn (problem i: family i mod F, level
    (i div F) mod L), the same for the same arguments."""
    families = tuple(FAMILIES if families is None else families)
    levels = tuple(levels)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(f"families must be some of {', '.join(FAMILIES)}; got {list(families)}")
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels must be some of {LEVELS}; got {list(levels)}")
    rng = random.Random(f"rstar-synthetic/{seed}")
    out, seen = [], set()
    for i in range(n):
        family, level = families[i % len(families)], levels[(i // len(families)) % len(levels)]
        for _ in range(1000):
            question, value, styles = _MAKERS[family](rng, level)
            if question not in seen:
                break
        else:
            raise ValueError(f"could not find a new {family} problem at level {level} after "
                             f"{len(out)} problems; ask for fewer problems or more families and "
                             "levels")
        seen.add(question)
        # The reference solution's style is drawn apart from the problem, so the problems of a
        # seed do not depend on how their solutions are written.
        style = random.Random(f"rstar-synthetic-style/{seed}/{i}").choice(sorted(styles))
        text = solution(*styles[style])
        out.append(Problem(question, latex(value), source=f"synthetic/{family}",
                           metadata={"family": family, "level": level, "solution": text,
                                     "style": style}))
    return out


def reference_examples(problems: Sequence[Problem], source: str = "reference") -> list[SFTExample]:
    """SFT examples of the reference solutions that problems carry (`metadata["solution"]`), in
    order; problems without one are skipped. The question stays bare: the policy prompt is added
    once, when the example is tokenized (`train.tokenize_sft`)."""
    return [SFTExample(p.id, p.question, p.metadata["solution"], source=source)
            for p in problems if p.metadata.get("solution")]
