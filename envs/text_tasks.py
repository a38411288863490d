"""Multi-turn text tasks with verifiable rewards, each with a scripted expert.

- :class:`NumberLine` and :class:`EZPoints`: the two text tasks of RL4VLM's gym_cards
  (Zhai et al. 2024, "Fine-Tuning Large Vision-Language Models as Decision-Making Agents via
  RL", Sec. 5); NumberLine's reward follows it (1 at the target, -1 for a move that does not
  get closer, 0 otherwise). Where a task's own rewards go below zero, an invalid utterance costs 1
  and wastes the turn by default (``InvalidActionPolicy("penalty")``): a policy that could end the
  episode early by babbling (re-prompting gives up after a few tries) would learn to quit.
- :class:`NumberLineImage`: the VLM variant, the number line drawn in an image.
- :class:`GuessNumber`: find a secret number from higher/lower answers.
- :class:`TextMaze`: walk a seeded random maze drawn in characters.
- :class:`GuessMyCity`: twenty-questions over an attribute table, answered by a rule-based
  oracle (ArCHer's Guess-My-City, Zhou et al. 2024, without a remote model).
- :class:`Calculator`: an agentic tool-use task: the policy may call ``calculator: <expr>``
  and must finish with ``answer: <number>``; only the exact value is rewarded.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import deque

import numpy as np
from gymnasium import spaces

from rlft.envs.text import InvalidActionPolicy, Outcome, TextEnv, parse_choice, text_space

_LAST_NUMBER = re.compile(r"-?\d+")


def _last_int(utterance: str) -> int | None:
    numbers = _LAST_NUMBER.findall(utterance)
    return int(numbers[-1]) if numbers else None


class NumberLine(TextEnv):
    """Move along ``0..size`` with ``+``/``-`` until the position equals the target."""

    system_prompt = "Reach the target on the number line. Answer + or -."

    def __init__(self, size: int = 5, max_turns: int | None = None, invalid_action: InvalidActionPolicy | None = None):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        super().__init__(max_turns or 2 * size, invalid_action or InvalidActionPolicy("penalty", penalty=1.0))
        self.size = size
        self.position = self.target = 0

    def _start(self) -> str:
        self.target = int(self.np_random.integers(0, self.size + 1))
        self.position = int((self.target + self.np_random.integers(1, self.size + 1)) % (self.size + 1))
        return self._describe()

    def _describe(self) -> str:
        return f"position {self.position}, target {self.target}"

    def parse(self, utterance: str) -> str | None:
        return parse_choice(utterance, ["+", "-"])

    def admissible_actions(self) -> list[str]:
        return ["+", "-"]

    def _apply(self, action: str) -> Outcome:
        before = abs(self.target - self.position)
        self.position = min(max(self.position + (1 if action == "+" else -1), 0), self.size)
        reached = self.position == self.target
        reward = 1.0 if reached else (-1.0 if abs(self.target - self.position) >= before else 0.0)
        return Outcome(self._describe(), reward, reached, reached)

    def expert_action(self) -> str:
        return "+" if self.target > self.position else "-"

    def expert_thought(self) -> str:
        """The comparison the move follows from, e.g. ``3<7``."""
        return f"{self.position}{'<' if self.position < self.target else '>'}{self.target}"


class NumberLineImage(NumberLine):
    """NumberLine seen in a picture (RL4VLM's gym_cards NumberLine is image-only): observations are
    ``{"text": instruction, "image": uint8 [S, S, 3]}``; the number line is drawn as ``size + 1``
    cells, the agent red in the upper half of its cell, the target green in the lower half."""

    system_prompt = "Move the red mark onto the green mark. Answer + or -."

    def __init__(self, size: int = 5, image_size: int = 96, max_turns: int | None = None,
                 invalid_action: InvalidActionPolicy | None = None):
        super().__init__(size, max_turns, invalid_action)
        if image_size < size + 1:
            raise ValueError(f"image_size {image_size} cannot show {size + 1} cells")
        self.image_size = image_size
        self.observation_space = spaces.Dict({
            "text": text_space(), "image": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)})

    def _describe(self) -> str:
        return "where is the red mark?"

    def draw(self) -> np.ndarray:
        """The number line as an RGB image."""
        s, cells = self.image_size, self.size + 1
        image = np.full((s, s, 3), 255, dtype=np.uint8)
        width = s // cells
        for cell in range(cells):  # grey cell borders
            image[:, cell * width] = 160
        middle = s // 2
        image[middle - 1: middle + 1] = 0  # the line
        image[: middle - 2, self.position * width + 2: (self.position + 1) * width - 2] = (220, 30, 30)
        image[middle + 2:, self.target * width + 2: (self.target + 1) * width - 2] = (30, 180, 30)
        return image

    def _observation(self, text: str) -> dict:
        return {"text": text, "image": self.draw()}


class GuessNumber(TextEnv):
    """Guess a secret in ``1..high``; each wrong guess is answered "higher" or "lower"."""

    system_prompt = "Guess the secret number. Answer with a number."

    def __init__(self, high: int = 16, max_turns: int | None = None, invalid_action: InvalidActionPolicy | None = None):
        if high < 2:
            raise ValueError(f"high must be >= 2, got {high}")
        super().__init__(max_turns or math.ceil(math.log2(high)) + 2, invalid_action)
        self.high = high
        self.secret = 1
        self.history: list[str] = []
        self.low_bound, self.high_bound = 1, high

    def _start(self) -> str:
        self.secret = int(self.np_random.integers(1, self.high + 1))
        self.history = []
        self.low_bound, self.high_bound = 1, self.high
        return self._describe()

    def _describe(self) -> str:
        tried = "; ".join(self.history) if self.history else "none"
        return f"secret in 1..{self.high}. guesses: {tried}"

    def parse(self, utterance: str) -> str | None:
        guess = _last_int(utterance)
        return str(guess) if guess is not None and 1 <= guess <= self.high else None

    def admissible_actions(self) -> list[str]:
        return [str(g) for g in range(1, self.high + 1)]

    def _apply(self, action: str) -> Outcome:
        guess = int(action)
        if guess == self.secret:
            self.history.append(f"{guess} correct")
            return Outcome(self._describe(), 1.0, True, True)
        if guess < self.secret:
            self.low_bound = max(self.low_bound, guess + 1)
            self.history.append(f"{guess} higher")
        else:
            self.high_bound = min(self.high_bound, guess - 1)
            self.history.append(f"{guess} lower")
        return Outcome(self._describe(), 0.0, False)

    def expert_action(self) -> str:
        return str((self.low_bound + self.high_bound) // 2)


class EZPoints(TextEnv):
    """Build a formula from two cards with ``+`` and ``*`` that equals ``target``, one element
    (a card value, an operator or ``=``) per turn. J, Q and K count as 10. Only solvable deals
    are drawn. Reward 10 for a correct formula, -1 for a wrong one; an element that cannot come
    next (a used card, two numbers in a row, ``=`` before both cards) is an invalid action."""

    system_prompt = "Write a formula equal to the target with both cards, one element per turn."
    RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")

    def __init__(self, target: int = 12, invalid_action: InvalidActionPolicy | None = None):
        super().__init__(max_turns=5, invalid_action=invalid_action or InvalidActionPolicy("penalty", penalty=1.0))
        self.target = target
        self.cards: list[str] = []
        self.formula: list[str] = []

    @staticmethod
    def value(rank: str) -> int:
        return 1 if rank == "A" else min(int(rank) if rank.isdigit() else 10, 10)

    def _solutions(self, cards: list[str]) -> list[list[str]]:
        a, b = (str(self.value(c)) for c in cards)
        return [[x, op, y, "="] for x, y in ((a, b), (b, a)) for op in ("+", "*")
                if self._evaluate([x, op, y]) == self.target]

    def _start(self) -> str:
        while True:
            cards = [self.RANKS[i] for i in self.np_random.integers(0, len(self.RANKS), size=2)]
            if self._solutions(cards):
                break
        self.cards, self.formula = cards, []
        return self._describe()

    def _describe(self) -> str:
        return f"cards {' '.join(self.cards)}, target {self.target}, formula: {''.join(self.formula)}"

    @staticmethod
    def _evaluate(formula: list[str]) -> int:
        return int(eval_arithmetic("".join(formula)))

    def _unused_values(self) -> list[str]:
        values = [str(self.value(c)) for c in self.cards]
        for element in self.formula:
            if element in values:
                values.remove(element)
        return values

    def admissible_actions(self) -> list[str]:
        if not self.formula or self.formula[-1] in ("+", "*"):
            return sorted(set(self._unused_values()), key=int)
        return ["=", "+", "*"] if not self._unused_values() else ["+", "*"]

    def parse(self, utterance: str) -> str | None:
        return parse_choice(utterance, self.admissible_actions())

    def _apply(self, action: str) -> Outcome:
        self.formula.append(action)
        if action != "=":
            return Outcome(self._describe(), 0.0, False)
        correct = self._evaluate(self.formula[:-1]) == self.target
        return Outcome(self._describe(), 10.0 if correct else -1.0, True, correct)

    def expert_action(self) -> str:
        for solution in self._solutions(self.cards):
            if solution[: len(self.formula)] == self.formula:
                return solution[len(self.formula)]
        return self.admissible_actions()[0]


class TextMaze(TextEnv):
    """Walk from ``A`` to ``G`` in a seeded random maze (``#`` walls). Reward 1 at the goal;
    walking into a wall is a legal move that wastes the turn."""

    system_prompt = "Walk from A to G. Answer up, down, left or right."
    MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

    def __init__(self, cells: int = 3, max_turns: int = 24, invalid_action: InvalidActionPolicy | None = None):
        super().__init__(max_turns, invalid_action)
        self.cells = cells
        self.grid: list[list[str]] = []
        self.agent = self.goal = (1, 1)

    def _start(self) -> str:
        n = 2 * self.cells + 1
        self.grid = [["#"] * n for _ in range(n)]
        stack, seen = [(0, 0)], {(0, 0)}
        self.grid[1][1] = "."
        while stack:  # depth-first carving: a perfect maze, one path between any two cells
            r, c = stack[-1]
            options = [(r + dr, c + dc) for dr, dc in self.MOVES.values()
                       if 0 <= r + dr < self.cells and 0 <= c + dc < self.cells and (r + dr, c + dc) not in seen]
            if not options:
                stack.pop()
                continue
            nr, nc = options[int(self.np_random.integers(len(options)))]
            self.grid[r + nr + 1][c + nc + 1] = "."
            self.grid[2 * nr + 1][2 * nc + 1] = "."
            seen.add((nr, nc))
            stack.append((nr, nc))
        free = [(r, c) for r in range(n) for c in range(n) if r % 2 and c % 2]
        a, g = self.np_random.choice(len(free), size=2, replace=False)
        self.agent, self.goal = free[int(a)], free[int(g)]
        return self._describe()

    def _describe(self) -> str:
        rows = []
        for r, row in enumerate(self.grid):
            rows.append("".join("A" if (r, c) == self.agent else "G" if (r, c) == self.goal else ch
                                for c, ch in enumerate(row)))
        return "\n".join(rows)

    def parse(self, utterance: str) -> str | None:
        return parse_choice(utterance, list(self.MOVES))

    def admissible_actions(self) -> list[str]:
        return list(self.MOVES)

    def _apply(self, action: str) -> Outcome:
        dr, dc = self.MOVES[action]
        r, c = self.agent[0] + dr, self.agent[1] + dc
        if self.grid[r][c] != "#":
            self.agent = (r, c)
        reached = self.agent == self.goal
        return Outcome(self._describe(), 1.0 if reached else 0.0, reached, reached)

    def expert_action(self) -> str:
        parents: dict[tuple[int, int], tuple[tuple[int, int], str]] = {}
        queue = deque([self.agent])
        while queue:  # breadth-first search back from the goal gives the first move
            cell = queue.popleft()
            if cell == self.goal:
                break
            for name, (dr, dc) in self.MOVES.items():
                nxt = (cell[0] + dr, cell[1] + dc)
                if self.grid[nxt[0]][nxt[1]] != "#" and nxt not in parents and nxt != self.agent:
                    parents[nxt] = (cell, name)
                    queue.append(nxt)
        cell, move = self.goal, ""
        while cell != self.agent:
            cell, move = parents[cell]
        return move


CITIES: dict[str, dict[str, str | bool]] = {
    "Tokyo": {"continent": "Asia", "coastal": True, "capital": True, "large": True},
    "Delhi": {"continent": "Asia", "coastal": False, "capital": True, "large": True},
    "Mumbai": {"continent": "Asia", "coastal": True, "capital": False, "large": True},
    "Kathmandu": {"continent": "Asia", "coastal": False, "capital": True, "large": False},
    "Paris": {"continent": "Europe", "coastal": False, "capital": True, "large": True},
    "Lisbon": {"continent": "Europe", "coastal": True, "capital": True, "large": False},
    "Barcelona": {"continent": "Europe", "coastal": True, "capital": False, "large": False},
    "Munich": {"continent": "Europe", "coastal": False, "capital": False, "large": False},
    "Cairo": {"continent": "Africa", "coastal": False, "capital": True, "large": True},
    "Lagos": {"continent": "Africa", "coastal": True, "capital": False, "large": True},
    "Nairobi": {"continent": "Africa", "coastal": False, "capital": True, "large": False},
    "Durban": {"continent": "Africa", "coastal": True, "capital": False, "large": False},
    "Lima": {"continent": "America", "coastal": True, "capital": True, "large": True},
    "Chicago": {"continent": "America", "coastal": False, "capital": False, "large": True},
    "Ottawa": {"continent": "America", "coastal": False, "capital": True, "large": False},
    "Vancouver": {"continent": "America", "coastal": True, "capital": False, "large": False},
}
CONTINENTS = ("Asia", "Europe", "Africa", "America")
QUESTIONS: dict[str, tuple[str, str | bool]] = {
    **{f"is it in {c.lower()}?": ("continent", c) for c in CONTINENTS},
    "is it on the coast?": ("coastal", True),
    "is it a capital?": ("capital", True),
    "does it have over 5 million people?": ("large", True),
}


class GuessMyCity(TextEnv):
    """Twenty questions about a hidden city: yes/no questions from a fixed set, answered by a
    rule-based oracle over :data:`CITIES`, or a guess ``is it <city>?``. Reward 1 for naming it."""

    system_prompt = "Find the hidden city with yes/no questions, then ask: is it <city>?"

    def __init__(self, max_turns: int = 8, invalid_action: InvalidActionPolicy | None = None):
        super().__init__(max_turns, invalid_action)
        self.city = ""
        self.answers: list[tuple[str, bool]] = []

    def _start(self) -> str:
        names = list(CITIES)
        self.city = names[int(self.np_random.integers(len(names)))]
        self.answers = []
        return self._describe()

    def _describe(self) -> str:
        asked = " ".join(f"{q} {'yes' if a else 'no'}." for q, a in self.answers)
        return f"cities: {', '.join(CITIES)}. asked: {asked or 'nothing'}"

    def admissible_actions(self) -> list[str]:
        return list(QUESTIONS) + [f"is it {name.lower()}?" for name in CITIES]

    def parse(self, utterance: str) -> str | None:
        text = " ".join(utterance.lower().replace("action:", " ").split())
        return text if text in self.admissible_actions() else None

    def _apply(self, action: str) -> Outcome:
        if action in QUESTIONS:
            key, value = QUESTIONS[action]
            self.answers.append((action, CITIES[self.city][key] == value))
            return Outcome(self._describe(), 0.0, False)
        correct = action == f"is it {self.city.lower()}?"
        self.answers.append((action, correct))
        return Outcome(self._describe(), 1.0 if correct else 0.0, correct, correct)

    def _candidates(self) -> list[str]:
        def consistent(name: str) -> bool:
            for question, answer in self.answers:
                if question in QUESTIONS:
                    key, value = QUESTIONS[question]
                    if (CITIES[name][key] == value) != answer:
                        return False
                elif question == f"is it {name.lower()}?" and not answer:
                    return False
            return True

        return [name for name in CITIES if consistent(name)]

    def expert_action(self) -> str:
        candidates = self._candidates()
        if len(candidates) == 1:
            return f"is it {candidates[0].lower()}?"

        def imbalance(question: str) -> int:
            key, value = QUESTIONS[question]
            yes = sum(CITIES[name][key] == value for name in candidates)
            return abs(2 * yes - len(candidates))

        return min(QUESTIONS, key=imbalance)


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def eval_arithmetic(expression: str) -> int:
    """Value of an integer expression of ``+ - * //`` and parentheses; ``ValueError`` otherwise."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from err

    def visit(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = visit(node.left), visit(node.right)
            if isinstance(node.op, ast.FloorDiv) and right == 0:
                raise ValueError("division by zero")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -visit(node.operand)
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    return visit(tree.body)


class Calculator(TextEnv):
    """Agentic tool use: answer ``a * b + c`` exactly. ``calculator: <expr>`` calls the tool
    (its result is the next observation); ``answer: <n>`` ends the episode, reward 1 if right."""

    system_prompt = "Use 'calculator: <expr>' to compute, then reply 'answer: <number>'."
    _CALL = re.compile(r"calculator\s*:\s*([-+*/()\d\s]+?)\s*$", re.IGNORECASE | re.MULTILINE)
    _ANSWER = re.compile(r"answer\s*:\s*(-?\d+)\s*$", re.IGNORECASE | re.MULTILINE)

    def __init__(self, max_turns: int = 4, invalid_action: InvalidActionPolicy | None = None):
        super().__init__(max_turns, invalid_action)
        self.question = ""
        self.result: int | None = None

    def _start(self) -> str:
        a, b, c = (int(x) for x in self.np_random.integers(11, 100, size=3))
        self.question = f"{a}*{b}+{c}"
        self.result = None
        return f"what is {self.question}?"

    def parse(self, utterance: str) -> str | None:
        answer = self._ANSWER.search(utterance)
        if answer:
            return f"answer: {int(answer.group(1))}"
        call = self._CALL.search(utterance)
        if call:
            try:
                eval_arithmetic(call.group(1))
            except ValueError:
                return None
            return f"calculator: {' '.join(call.group(1).split())}"
        return None

    def admissible_actions(self) -> list[str]:
        return ["calculator: <expression>", "answer: <number>"]

    def default_action(self) -> str:
        return "answer: 0"

    def _apply(self, action: str) -> Outcome:
        kind, _, argument = action.partition(": ")
        if kind == "calculator":
            self.result = eval_arithmetic(argument)
            return Outcome(f"what is {self.question}? calculator says {self.result}", 0.0, False)
        correct = int(argument) == eval_arithmetic(self.question)
        return Outcome(f"what is {self.question}? you answered {argument}", float(correct), True, correct)

    def expert_action(self) -> str:
        return f"calculator: {self.question}" if self.result is None else f"answer: {self.result}"
