"""What each stage hands on: one frozen dataclass per stage, written as its `<stage>.json` in the
round's directory when the stage finishes (`RunDir.stage`), read back by a resumed run, and
turned into the round's report row (`round_result`).

`from_json` reads the summaries of runs started by earlier versions too: fields they lack take
their defaults, fields it does not know are left out.
"""

from __future__ import annotations

import dataclasses
import math

from rstar_jax.report import RoundResult


def _known(cls, d: dict) -> dict:
    """The items of `d` that are fields of `cls`, `notes` as a tuple."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in d.items() if k in names}
    if "notes" in out:
        out["notes"] = tuple(out["notes"])
    return out


class _Summary:
    """A stage summary as its JSON file holds it: the fields, in order (tuples are written as
    lists), read back from the fields the file has."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict):
        return cls(**_known(cls, d))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSummary(_Summary):
    """search.json: what the round's MCTS found over the training problems."""

    mode: str  # search.config.Mode: "terminal", or PPM-augmented
    problems: int
    solved: int
    solved_first: int  # by the round's first search (round 4 searches the unsolved ones again)
    rollouts: int = 0
    candidates: int = 0
    unsolved_rollouts: int = 0
    searched_again: int = 0
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict) -> SearchSummary:
        return cls(**{"solved_first": d["solved"], **_known(cls, d)})  # (older runs: no retry)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractSummary(_Summary):
    """extract.json: the training records extracted from the round's trees."""

    sft: int  # SFT examples
    pairs: int  # PPM pairs
    pair_kinds: dict = dataclasses.field(default_factory=dict)  # "step", "final" -> pairs
    outcomes: int = 0  # ORM examples
    problems_with_sft: int = 0
    stats: dict = dataclasses.field(default_factory=dict)  # data.extract.ExtractStats, as a dict
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSummary(_Summary):
    """policy.json, ppm.json, orm.json: a model trained in the round (`trained`), or the one
    carried over from the round before (None: there is none)."""

    model: str | None  # relative to the workdir when inside it
    trained: bool
    notes: tuple[str, ...] = ()  # why nothing was trained
    steps: int = 0
    examples: int = 0
    held_out: int | None = None  # reward models: held-out examples
    final_loss: float | None = math.nan  # (None: a reward model resumed after its last step)
    held_out_accuracy: float | None = None
    held_out_step_accuracy: float | None = None  # the PPM's, on step pairs alone
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = {"model": self.model, "trained": self.trained}
        if self.notes:
            out["notes"] = list(self.notes)
        if self.trained:
            out |= {"steps": self.steps, "examples": self.examples}
            if self.held_out is not None:
                out["held_out"] = self.held_out
            out["final_loss"] = self.final_loss
            for name in ("held_out_accuracy", "held_out_step_accuracy"):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)
        return out | {"seconds": self.seconds}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootstrapSummary(_Summary):
    """bootstrap/bootstrap.json: the "reference" bootstrap policy, the base model fine-tuned on
    reference solutions."""

    model: str
    steps: int
    examples: int
    final_loss: float
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSummary(_Summary):
    """eval.json: the round's evaluation on the test problems."""

    evaluation: dict  # evaluate.Evaluation, as a dict
    notes: tuple[str, ...] = ()
    seconds: float = 0.0


# What base/convert.json keeps of `models.vocab.convert_checkpoint`'s summary, besides the path.
CONVERSION = ("source", "tokenizer", "dtype", "added", "present", "rows_before", "rows_after")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertSummary(_Summary):
    """base/convert.json: the base checkpoint given the step tokens (`model`, in the workdir)."""

    model: str
    conversion: dict = dataclasses.field(default_factory=dict)  # CONVERSION's fields
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"model": self.model, **self.conversion, "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict) -> ConvertSummary:
        return cls(model=d["model"], conversion={k: d[k] for k in CONVERSION if k in d},
                   seconds=d.get("seconds", 0.0))


# --- the report's rows ------------------------------------------------------------------------


def round0_result(kind: str, ev: EvalSummary) -> RoundResult:
    """Round 0's row: the bootstrap policy (`config.bootstrap.kind`) evaluated alone."""
    x = RoundResult(0, f"bootstrap ({kind})", minutes=ev.seconds / 60, notes=list(ev.notes))
    x.set_evaluation(ev.evaluation)
    return x


def round_result(r: int, search: SearchSummary, extract: ExtractSummary, policy: TrainSummary,
                 ppm: TrainSummary, orm: TrainSummary, ev: EvalSummary,
                 first: RoundResult) -> RoundResult:
    """Round r's row, from its stages' summaries; `first`: round 0's row, whose greedy accuracy
    the round's is compared with."""
    if r == 1:
        name = "bootstrap"
    else:
        name = f"SLM-r{r - 1}" + (" + PPM" if search.mode != "terminal" else "")
    seconds = sum(s.seconds for s in (search, extract, policy, ppm, orm, ev))
    x = RoundResult(r, name, search.mode, search.problems, search.solved, search.solved_first,
                    extract.sft, policy.steps, extract.pairs, ppm.steps, extract.outcomes,
                    ppm_pair_accuracy=ppm.held_out_step_accuracy or math.nan,
                    minutes=seconds / 60,
                    notes=[*search.notes, *policy.notes, *ppm.notes, *orm.notes, *ev.notes])
    x.set_evaluation(ev.evaluation, first)
    return x
