"""Submodel plans, compression strategies, extraction and remapping."""

from raysim.submodel.extract import extract, remap
from raysim.submodel.plan import SubmodelPlan, full_plan, param_index, plan_indices, prefix_plan, validate_plan
from raysim.submodel.strategies import STRATEGIES, Strategy, make_strategy

__all__ = ["SubmodelPlan", "Strategy", "STRATEGIES", "extract", "remap", "full_plan", "param_index",
           "plan_indices", "prefix_plan", "validate_plan", "make_strategy"]
