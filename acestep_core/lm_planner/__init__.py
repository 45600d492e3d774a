"""The 5 Hz LM planner: prompts, constrained decoding and sampling around ``models.lm.QwenLM``."""
from .planner import LMSample, Plan, Planner, given_metas

__all__ = ["LMSample", "Plan", "Planner", "given_metas"]
