"""What this installation of moeweave can do here: version, native modules, CPU ISA, threads,
CUDA build and devices, io_uring. Gathered without side effects beyond loading the modules.
"""

import os
import platform

import moeweave
from moeweave import _native, envs

_ERRNO_NAMES = {1: "EPERM (blocked, e.g. by a seccomp profile)", 38: "ENOSYS (kernel without io_uring)"}


# The oldest Linux driver that runs each CUDA major release (NVIDIA's minor-version compatibility
# table): cudart is linked statically, so this, not the toolkit on the machine, is what counts.
_MIN_LINUX_DRIVER = {12: "525.60.13", 13: "580.65.06"}


def gather() -> dict:
    import torch

    report: dict = {
        "moeweave": moeweave.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "environment": envs.set_variables(),
    }
    cpu = _native.cpu_module()
    if cpu is None:
        report["cpu_module"] = {"loaded": False, "error": _native.load_error("_C")}
    else:
        available, errno = cpu.io_uring_status()
        report["cpu_module"] = {
            "loaded": True,
            "path": cpu.__file__,
            "isa": cpu.current_isa(),
            "supported_isas": list(cpu.supported_isas()),
            "avx512_bf16": bool(cpu.avx512_bf16_supported()),
            "threads": cpu.num_threads(),
        }
        report["io_uring"] = {
            "available": bool(available),
            "error": None if available else _ERRNO_NAMES.get(errno, os.strerror(errno)),
        }
    report["torch_threads"] = torch.get_num_threads()
    cuda = _native.cuda_module()
    if cuda is None:
        report["cuda_module"] = {"built": False, "error": _native.load_error("_C_cuda")}
    else:
        devices = cuda.device_count()
        version = cuda.runtime_version()
        report["cuda_module"] = {
            "built": True,
            "archs": ["sm_" + a for a in cuda.archs.split(",")],
            "runtime": f"{version // 1000}.{version % 1000 // 10}",
            "driver_needed": _MIN_LINUX_DRIVER.get(version // 1000, "unknown"),
            "devices": max(devices, 0),
            "driver_error": None if devices >= 0 else f"cudaError {-devices} (no GPU or no driver)",
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"moeweave {report['moeweave']}  (python {report['python']}, torch {report['torch']}, {report['platform']})"
    ]
    cpu = report["cpu_module"]
    if cpu["loaded"]:
        lines.append(f"native CPU module: loaded from {cpu['path']}")
        lines.append(f"  ISA in use: {cpu['isa']}  (supported: {', '.join(cpu['supported_isas'])})")
        pairs = "yes (attention over bf16 caches)" if cpu["avx512_bf16"] else "no"
        lines.append(f"  AVX512-BF16: {pairs}")
        lines.append(f"  threads: {cpu['threads']} (moeweave pool), {report['torch_threads']} (torch)")
        uring = report["io_uring"]
        lines.append(f"io_uring: {'available' if uring['available'] else 'unavailable: ' + uring['error']}")
    else:
        lines.append(f"native CPU module: NOT LOADED ({cpu['error']}); ops use plain-torch fallbacks")
    cuda = report["cuda_module"]
    if cuda["built"]:
        devices = cuda["devices"] or f"none ({cuda['driver_error'] or 'no GPU visible'})"
        lines.append(
            f"CUDA module: built for {', '.join(cuda['archs'])}, CUDA runtime {cuda['runtime']} "
            f"(needs NVIDIA driver >= {cuda['driver_needed']}); devices: {devices}"
        )
    else:
        lines.append(f"CUDA module: not built ({cuda['error']})")
    for name, value in report["environment"].items():
        lines.append(f"  {name}={value}")
    return "\n".join(lines)
