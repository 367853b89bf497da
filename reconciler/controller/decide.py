"""The choices of going live and of retiring, as pure functions (table-tested in
``tests/unit/test_decide.py``); the executors in ``golive`` and ``activate`` only carry them out.

- ``on_port``: without the edge, an instance of the release that runs already is reused;
  otherwise a new one starts on a new port.
- ``slot_adoption``: a project that has no slots yet adopts the port of an instance of the
  release that runs already (after an upgrade from an edge without slots), so it is reused
  rather than started twice.
- ``slot_choice``: blue-green at the edge. The release's instance already on a slot port is
  reused on that slot; otherwise the new instance starts on the slot the edge does not route
  to (slot ``a`` when none is routed yet).
- ``retire_how``: an instance no longer wanted is drained in the background at the edge; it
  is stopped at once without the edge (its port was the address) and for a service (Swarm
  replaced its tasks already).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.kinds import ServeMode


@dataclass(frozen=True)
class Running:
    """An instance of the release being deployed that runs already."""

    key: str
    port: int | None
    draining: bool = False  # taken out of service: it will be stopped, never reused


@dataclass(frozen=True)
class Reuse:
    port: int


@dataclass(frozen=True)
class StartOn:
    port: int | None  # None: allocate a new one


def on_port(existing: Running | None) -> Reuse | StartOn:
    if existing is not None and existing.port is not None and not existing.draining:
        return Reuse(existing.port)
    return StartOn(None)


def reusable(existing: Running | None) -> Running | None:
    """The running instance of the release, unless it is being drained."""
    return existing if existing is not None and not existing.draining else None


def slot_adoption(existing: Running | None, slots: tuple[int, int] | None) -> int | None:
    """The port to reserve as a project's first slot (None: reserve new ones, or keep them)."""
    found = reusable(existing)
    return found.port if found is not None and slots is None else None


@dataclass(frozen=True)
class SlotChoice:
    slot: str  # "a" or "b": where the edge routes after the switch
    port: int  # that slot's port
    reuse: bool  # the release's instance runs there already


def slot_choice(slots: tuple[int, int], routed: str | None, existing: Running | None) -> SlotChoice:
    found = reusable(existing)
    by_port = {slots[0]: "a", slots[1]: "b"}
    if found is not None and found.port in by_port:
        return SlotChoice(by_port[found.port], found.port, reuse=True)
    slot = "b" if routed == "a" else "a"
    return SlotChoice(slot, slots[0] if slot == "a" else slots[1], reuse=False)


class Retire(StrEnum):
    DRAIN = "drain"
    STOP = "stop"


def retire_how(mode: ServeMode, *, drains: bool) -> Retire:
    """``drains``: a drainer runs (the edge is on)."""
    if mode in (ServeMode.PORT, ServeMode.SERVICE) or not drains:
        return Retire.STOP
    return Retire.DRAIN
