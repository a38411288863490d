"""A scripted pusher for gym-pusht's Push-T (Chi et al. 2023's task): demonstrations without
human teleoperation.

Each step it reads the block's pose from the simulator (privileged state; the policy it
teaches sees pixels), picks the contact point on the T's outline whose push best moves the
block towards the goal pose, and sends the agent there: first to a point in front of that
contact (around the block, never through it), then through the contact for a few steps.

The push at contact ``c`` with inward normal ``d`` is scored by quasi-static reasoning:
``d . e_xy + lambda (r x d) e_theta`` with ``e_xy`` the error of the centre of mass,
``e_theta`` the angle error (times a lever arm, so both are in pixels) and ``r = c - com``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGENT_RADIUS = 15.0


def _outline(shapes) -> tuple[np.ndarray, np.ndarray]:
    """Points on the T's outline (body frame) with outward normals; edges shared by the two
    boxes are inside the T and dropped."""
    polys = [np.array([tuple(v) for v in shape.get_vertices()]) for shape in shapes]
    points, normals = [], []
    for i, poly in enumerate(polys):
        centre = poly.mean(0)
        for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
            edge = b - a
            normal = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)
            if normal @ ((a + b) / 2 - centre) < 0:
                normal = -normal
            for t in np.linspace(0.15, 0.85, max(2, int(np.linalg.norm(edge) // 15))):
                p = a + t * edge
                probe = p + 3.0 * normal
                if not any(_inside(probe, other) for j, other in enumerate(polys) if j != i):
                    points.append(p)
                    normals.append(normal)
    return np.array(points), np.array(normals)


def _inside(p: np.ndarray, poly: np.ndarray) -> bool:
    lo, hi = poly.min(0), poly.max(0)  # the T's boxes are axis-aligned in the body frame
    return bool(np.all(p > lo) and np.all(p < hi))


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return v @ np.array([[c, s], [-s, c]])


@dataclass
class PushTController:
    """Call :meth:`reset` after every env reset, then ``act(env)`` each step (agent target in pixels)."""

    angle_weight: float = 1.5  # lambda: rotation against translation
    lever: float = 60.0  # pixels per radian of angle error
    standoff: float = AGENT_RADIUS + 8.0  # approach point in front of the contact
    push_depth: float = 25.0  # how far through the contact the target lies while pushing (at most)
    min_depth: float = 3.0  # ... and at least
    depth_gain: float = 0.3  # depth per pixel of pose error
    commit_steps: int = 2  # steps a chosen push is kept (then the contact is chosen again)
    clearance: float = 115.0  # radius around the centre of mass used to go round the block

    def reset(self) -> None:
        self._contact: tuple[np.ndarray, np.ndarray] | None = None
        self._pushing = 0
        self._outline_cache = None

    def act(self, env) -> np.ndarray:
        sim = env.unwrapped
        block, agent = sim.block, np.array(sim.agent.position)
        if self._outline_cache is None:
            self._outline_cache = _outline(sim._block_shapes)
        local_points, local_normals = self._outline_cache
        angle = block.angle
        position = np.array(block.position)
        com_local = np.array(tuple(block.center_of_gravity))
        com = position + _rotate(com_local, angle)
        goal = sim.goal_pose
        goal_com = goal[:2] + _rotate(com_local, goal[2])
        e_xy = goal_com - com
        e_theta = (goal[2] - angle + np.pi) % (2 * np.pi) - np.pi
        # push gently near the goal: the depth shrinks with the remaining pose error
        depth = min(
            self.push_depth, self.min_depth + self.depth_gain * (np.linalg.norm(e_xy) + self.lever * abs(e_theta))
        )
        if self._pushing > 0 and self._contact is not None:
            self._pushing -= 1
            c, n = self._contact
            return np.clip(c - n * depth, 10, 502)
        points = position + _rotate(local_points, angle)
        normals = _rotate(local_normals, angle)
        push = -normals
        r = points - com
        torque = r[:, 0] * push[:, 1] - r[:, 1] * push[:, 0]
        score = push @ e_xy + self.angle_weight * torque / self.lever * e_theta * self.lever
        best = int(np.argmax(score))
        c, n = points[best], normals[best]
        approach = c + n * self.standoff
        if np.linalg.norm(agent - approach) < 8.0:
            self._contact, self._pushing = (c, n), self.commit_steps
            return np.clip(c - n * depth, 10, 502)
        return np.clip(self._route(agent, approach, com, sim._block_shapes), 10, 502)

    def _route(self, agent: np.ndarray, target: np.ndarray, com: np.ndarray, shapes) -> np.ndarray:
        """Next waypoint to ``target`` that keeps out of the block: straight when the agent's
        disc can sweep there without touching the T, else round the centre of mass on a circle."""
        if not any(shape.segment_query(tuple(agent), tuple(target), AGENT_RADIUS - 2).shape for shape in shapes):
            return target
        a_agent = np.arctan2(*(agent - com)[::-1])
        a_target = np.arctan2(*(target - com)[::-1])
        delta = (a_target - a_agent + np.pi) % (2 * np.pi) - np.pi
        step = np.sign(delta) * min(abs(delta), 0.6)
        radius = max(self.clearance, np.linalg.norm(agent - com))
        return com + radius * np.array([np.cos(a_agent + step), np.sin(a_agent + step)])
