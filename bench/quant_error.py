"""How much error does each quantiser add, per bitwidth? Relative Frobenius error of the
dequantised weight, for round-to-nearest and the MSE clipping search, symmetric and asymmetric,
group 64, on Gaussian weights and on heavy-tailed (Student-t, 3 dof) weights that look more
like trained experts; plus the relative error of quant_matmul's output against an fp32 matmul
with the original weight (weight error and int8-activation error together).

    python bench/quant_error.py
"""

import torch
from common import Report, Row

from moeweave.ops import quant_matmul
from moeweave.quant import quantize, relative_error

SHAPE = (1024, 2048)


def main() -> None:
    report = Report(__file__, {})
    report.header()
    torch.manual_seed(0)  # StudentT samples from the global generator
    generator = torch.Generator().manual_seed(0)
    weights = {
        "gaussian": torch.randn(SHAPE, generator=generator),
        "student-t3": torch.distributions.StudentT(3.0).sample(SHAPE) / 3**0.5,
    }
    x = torch.randn(16, SHAPE[1], generator=generator)
    for name, w in weights.items():
        exact = x @ w.t()
        for bits in (2, 3, 4, 8):
            for sym in (True, False):
                rtn = relative_error(w, quantize(w, bits=bits, group_size=64, sym=sym, method="rtn"))
                for method in ("rtn", "mse"):
                    qw = quantize(w, bits=bits, group_size=64, sym=sym, method=method)
                    error = relative_error(w, qw)
                    output = float((quant_matmul(x, qw) - exact).norm() / exact.norm())
                    config = f"{name} int{bits} {'sym' if sym else 'asym'} g64"
                    report.add(
                        Row(
                            f"quantize {method}",
                            config,
                            error,
                            "rel err",
                            "rtn error / this",
                            rtn / error,
                            None,
                        )
                    )
                    report.add(
                        Row(
                            f"quant_matmul {method}",
                            config,
                            output,
                            "rel err",
                            "rtn error / this",
                            rtn / output,
                            None,
                        )
                    )
    report.finish()


if __name__ == "__main__":
    main()
