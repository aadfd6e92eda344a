"""mntvm: MobileNetV1 written in TVM Relax, compiled, tuned and benchmarked for edge targets."""
from mntvm.core.errors import MntvmError

__version__ = "0.1.0"
__all__ = ["MntvmError", "__version__"]
