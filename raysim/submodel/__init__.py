"""Submodel plans, compression strategies, extraction and remapping."""

from raysim.submodel.extract import extract, remap
from raysim.submodel.plan import SubmodelPlan, full_plan, param_index, plan_indices, prefix_plan, validate_plan
from raysim.submodel.strategies import Full, Magnitude, Random, Rolling, Static, Strategy

__all__ = ["SubmodelPlan", "Strategy", "Static", "Rolling", "Random", "Magnitude", "Full", "extract", "remap",
           "full_plan", "param_index", "plan_indices", "prefix_plan", "validate_plan"]
