"""What one MCTS run does and spends: the mode, the budgets, the sampling, the node capacity.

Budgets follow RSTAR.md section 3. `SearchConfig.preset(name, stage)` gives the paper's or the
reference code's setting of a stage ("round1", "round2", "round3", "round4", "test"); where the
paper is silent (temperatures, test-time rollouts) the reference code's value is used.
"""

from __future__ import annotations

import dataclasses
import enum

from rstar_jax._checks import positive_int


class Mode(enum.Enum):
    """How nodes get their values (RSTAR.md section 3, "Values and backup")."""

    TERMINAL = "terminal"  # rounds 1-2: answers graded against the reference, +1/-1 backed up
    PPM = "ppm"  # rounds 3-4: as TERMINAL, and new non-terminal nodes start at N=1, W=PPM score
    TEST = "test"  # test time: answers scored by the PPM instead of the reference

    @property
    def graded(self) -> bool:
        return self is not Mode.TEST

    @property
    def uses_ppm(self) -> bool:
        return self is not Mode.TERMINAL


STAGES = ("round1", "round2", "round3", "round4", "test")

# (candidates, rollouts, temperature) per stage.
_PRESETS = {
    "paper": {"round1": (5, 8, 0.7), "round2": (8, 16, 1.0), "round3": (8, 16, 1.0),
              "round4": (16, 16, 1.0), "test": (32, 12, 1.0)},
    "reference_code": {"round1": (12, 48, 0.7), "round2": (12, 48, 1.0), "round3": (12, 48, 1.0),
                       "round4": (12, 48, 1.0), "test": (32, 12, 1.0)},
}  # fmt: skip
# Rollouts of a second search of the problems a stage's search left unsolved (RSTAR.md section 6:
# 64-128 in round 4; the reference code has no second search).
_UNSOLVED_ROLLOUTS = {"paper": {"round4": 64}, "reference_code": {}}
_STAGE_MODES = {"round1": Mode.TERMINAL, "round2": Mode.TERMINAL, "round3": Mode.PPM,
                "round4": Mode.PPM, "test": Mode.TEST}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """One search: B problems, each `rollouts` rollouts, `candidates` samples per expansion.

    capacity: nodes per tree, the root included; by default the most a search can create,
    1 + rollouts * (max_depth + 1) * candidates. A smaller one saves memory; a problem that runs out
    stops searching (reported in its result), the others go on.
    """

    mode: Mode = Mode.TERMINAL  # how nodes get their values (Mode); a preset sets its stage's
    rollouts: int = 16  # counted rollouts per problem: bounds the trajectories it explores
    candidates: int = 8  # K: samples per expansion
    # A non-answer node deeper than this is terminal (RSTAR.md: depth > max_depth).
    max_depth: int = 16
    c_uct: float = 2.0  # UCT's exploration constant
    errors_threshold: int = 1  # consecutive failing steps that end a path (bootstrap: 2)
    max_step_tokens: int = 256  # generation budget of one step
    max_output_tokens: int = 64  # tokens of an <output> block kept in a node (stdout is cut to fit)
    temperature: float = 1.0  # the policy's sampling temperature for candidate steps
    top_p: float = 1.0  # nucleus sampling (1: off)
    top_k: int = 0  # sample among the k likeliest tokens (0: off)
    bootstrap: bool = False  # round-1 prompt (instructions + 2 examples) and stops
    # Graded modes: a problem no rollout solved is searched again, from scratch, with this many
    # rollouts (0: never). The paper's round 4 gives unsolved problems 64.
    unsolved_rollouts: int = 0
    # Each step's problems in two halves, so one half's programs run while the other half
    # samples: worth it when execution is slow; with a small model and cheap programs it only
    # halves the batches the policy samples for. The trees are the same either way.
    overlap: bool = True
    # Continuous batching (`ContinuousDecoder`), when the policy offers it (an engine with a
    # prefix store of a row per batch place): each problem goes on to execution and scoring as
    # soon as its own samples stop, and decoding never waits for the slowest problem; `overlap`
    # then does not apply. The trees are the same either way. With the prefix stores it runs
    # 1.50x the rollouts/s of the stores alone on short steps and 1.18x on deep paths
    # (benchmarks/prefix_reuse.py, CPU, at e0efc21); off by default until the rounds are
    # measured with it.
    continuous: bool = False
    seed: int = 0  # sampling seeds derive from it, the problem and the node
    capacity: int | None = None  # nodes per tree (class docstring); None: the most it can create

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode(self.mode))
        for name in ("rollouts", "candidates", "max_depth", "errors_threshold", "max_step_tokens",
                     "max_output_tokens"):
            positive_int(getattr(self, name), f"SearchConfig.{name}")
        unsolved = self.unsolved_rollouts
        if isinstance(unsolved, bool) or not isinstance(unsolved, int) or unsolved < 0:
            raise ValueError("SearchConfig.unsolved_rollouts must be an int >= 0, got "
                             f"{unsolved!r}")
        if self.max_output_tokens < 4:
            raise ValueError("SearchConfig.max_output_tokens must be >= 4 to hold "
                             f"<output>...<end_of_output>, got {self.max_output_tokens}")
        if not self.c_uct >= 0:
            raise ValueError(f"SearchConfig.c_uct must be >= 0, got {self.c_uct!r}")
        least = 1 + self.candidates  # the root and one expansion
        capacity = self.capacity
        if capacity is not None and (not isinstance(capacity, int) or capacity < least):
            raise ValueError(f"SearchConfig.capacity must be an int >= 1 + candidates = {least} "
                             f"(the root and one expansion), got {self.capacity!r}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"SearchConfig.seed must be in [0, 2**32), got {self.seed!r}")

    @property
    def nodes(self) -> int:
        """N, the node capacity of each tree."""
        # A rollout expands at most one node at each depth 0..max_depth.
        return self.capacity or 1 + self.rollouts * (self.max_depth + 1) * self.candidates

    @property
    def step_capacity(self) -> int:
        """L_step, the tokens one node holds: a generated step plus its output block."""
        return self.max_step_tokens + self.max_output_tokens

    @classmethod
    def preset(cls, name: str = "paper", stage: str = "round2", **overrides) -> SearchConfig:
        """The budgets of `stage` in the paper ("paper") or the reference code ("reference_code"),
        with its mode, plus any field given in `overrides`."""
        if name not in _PRESETS:
            raise ValueError(f"unknown search preset {name!r}; known: {', '.join(_PRESETS)}")
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        candidates, rollouts, temperature = _PRESETS[name][stage]
        unsolved = _UNSOLVED_ROLLOUTS[name].get(stage, 0)
        bootstrap = overrides.get("bootstrap", stage == "round1")
        # The bootstrap prompt's policy (a large coder) may fix a failing step with the next one,
        # so it tolerates two errors in a row; a policy that writes the format itself does not.
        fields = {"mode": _STAGE_MODES[stage], "candidates": candidates, "rollouts": rollouts,
                  "temperature": temperature, "bootstrap": bootstrap,
                  "errors_threshold": 2 if bootstrap else 1, "unsolved_rollouts": unsolved}
        return cls(**{**fields, **overrides})
