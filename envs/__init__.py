"""Environments: task registry, wrappers and factories (``make_env``, ``make_vector_env``)."""

from rlft.envs.factory import EnvConfig, make_env, make_vector_env, resolve_task
from rlft.envs.registry import TaskSpec, get_task, list_tasks, register_task

__all__ = ["EnvConfig", "TaskSpec", "get_task", "list_tasks", "make_env", "make_vector_env", "register_task", "resolve_task"]
