"""The on-device engine (EdgeMoE): experts on SSD under a RAM byte budget, predicted io_uring
prefetch, outputs identical to the all-in-RAM model. See moeweave.engine.engine."""

from moeweave.engine.cache import POLICIES, BudgetError
from moeweave.engine.engine import Engine, is_store, store_for
from moeweave.engine.predictors import PREDICTORS
from moeweave.engine.sizes import parse_size

__all__ = ["POLICIES", "PREDICTORS", "BudgetError", "Engine", "is_store", "parse_size", "store_for"]
