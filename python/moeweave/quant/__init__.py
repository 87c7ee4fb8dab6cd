"""Weight-only quantisation of expert matrices: the packed INT2/3/4/8 format, the quantisers,
and the expert slot table the fused MoE op reads. The ops that compute on the packed format
(``quant_matmul``, ``moe_experts``) live in ``moeweave.ops``, which depends on this package and
never the other way round.
"""

from moeweave.quant.experts import ExpertTable
from moeweave.quant.format import QuantizedWeight
from moeweave.quant.quantize import dequantize, quantize, relative_error

__all__ = ["ExpertTable", "QuantizedWeight", "dequantize", "quantize", "relative_error"]
