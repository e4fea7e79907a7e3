"""Several processes of one job (a pod's hosts): who this process is, barriers, and the
decisions and shared work that process 0 does for all, through JAX's coordination service.

Every process must make the same calls in the same order: each barrier and decision is named by
a counter. On one process nothing waits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax


class ProcessFailed(RuntimeError):
    """Process 0 failed at work it did for every process; the message is its error."""


def index_and_count() -> tuple[int, int]:
    """(index, count) of this process in the job; (0, 1) on one host."""
    return jax.process_index(), jax.process_count()


def _client():
    """JAX's coordination service client. Its module is private, so it is imported only when
    several processes run: one host never touches it."""
    from jax._src import distributed

    return distributed.global_state.client


def is_first() -> bool:
    """Whether this is process 0, the one that writes what every process shares."""
    return jax.process_index() == 0


BARRIER_HOURS = 48  # a process may wait while another searches more chunks or writes the exports
_barriers = itertools.count()


def barrier(name: str) -> None:
    """Waits for every process to reach `name` (nothing to wait for on one host).

    A barrier of the coordination service, not a device collective: processes may arrive hours
    apart, and a collective's first use (gloo on CPU) gives up after 30 s."""
    if index_and_count()[1] > 1:
        _client().wait_at_barrier(f"rstar_jax {next(_barriers)}: {name}",
                                                        BARRIER_HOURS * 3600 * 1000)


def agreed(name: str, decide: Callable[[], bool]) -> bool:
    """`decide()` as process 0 finds it, on every process (published through the coordination
    service): whether a stage is done is one process's reading of the work directory, so that a
    process arriving late, after another finished the stage, still runs the stage's barriers."""
    if index_and_count()[1] == 1:
        return decide()
    client, key = _client(), f"rstar_jax decision {next(_decisions)}: {name}"
    if index_and_count()[0] == 0:
        value = bool(decide())
        client.key_value_set(key, "yes" if value else "no")
        return value
    return client.blocking_key_value_get(key, BARRIER_HOURS * 3600 * 1000) == "yes"


_decisions = itertools.count()


def by_process_0(name: str, fn: Callable[[], object]) -> object:
    """`fn()` run by process 0 alone (a shared file written once) while the others wait for it;
    its result on process 0, None elsewhere. When it fails, every process raises: the others
    with process 0's error, instead of waiting at the next barrier for a process that stopped."""
    index, count = index_and_count()
    if count == 1:
        return fn()
    client, key = _client(), f"rstar_jax work {next(_decisions)}: {name}"
    if index == 0:
        try:
            result = fn()
        except Exception as e:
            client.key_value_set(key, f"{type(e).__name__}: {e}")
            raise
        client.key_value_set(key, "")
        return result
    error = client.blocking_key_value_get(key, BARRIER_HOURS * 3600 * 1000)
    if error:
        raise ProcessFailed(f"process 0 failed at {name}: {error}")
    return None
