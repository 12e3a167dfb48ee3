"""The action plan: the actions planned for upcoming ticks, merged from successive chunks.

Action i of a chunk computed from the observation of tick k0 is meant for tick k0 + i, so when the chunk
arrives at tick k the first k - k0 actions are already in the past and are dropped (latency compensation).
A new chunk either replaces the plan (`chunk_rule="switch"`) or is cross-faded into it over `blend_steps`
ticks (`"blend"`)."""

from __future__ import annotations

import numpy as np

from toto_robot.deploy.worker import Chunk


class ActionPlan:
    """Actions planned for upcoming ticks, merged from successive chunks."""

    def __init__(self, rule: str, blend_steps: int):
        self.rule, self.blend_steps = rule, blend_steps
        self.start = 0  # tick of actions[0]
        self.actions = np.zeros((0, 0), np.float32)  # (n, A)
        self.chunk_index = np.zeros(0, np.int64)  # index within its chunk of each planned action

    def merge(self, chunk: Chunk, now: int) -> int:
        """Add a chunk at tick `now`; returns how many of its actions were already due (dropped)."""
        actions = chunk.actions
        dropped = min(max(now - chunk.tick, 0), len(actions))
        new, new_index = actions[dropped:], np.arange(dropped, len(actions))
        old = self.actions[max(now - self.start, 0):] if len(self.actions) else self.actions
        if self.rule == "blend" and len(old) and len(new):
            n = min(len(old), len(new))
            # (n, 1): the new chunk's weight, ramping up to 1 over blend_steps ticks
            w = np.minimum(np.arange(1, n + 1) / (self.blend_steps + 1), 1.0)[:, None]
            new = new.copy()
            new[:n] = (1 - w) * old[:n] + w * new[:n]
        self.start, self.actions, self.chunk_index = now, new.astype(np.float32), new_index
        return dropped

    def action_at(self, tick: int) -> tuple[np.ndarray, int] | None:
        i = tick - self.start
        if 0 <= i < len(self.actions):
            return self.actions[i], int(self.chunk_index[i])
        return None
