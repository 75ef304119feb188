"""Builds bckd_kernels._C: CPU kernels always, CUDA kernels when possible.

    pip install -e . --no-build-isolation

BCKD_CUDA=1 makes the CUDA build mandatory (it fails when torch is not a CUDA
build or no CUDA toolkit is found), BCKD_CUDA=0 builds the CPU kernels only;
unset, CUDA kernels are built whenever they can be. No GPU is needed to build
them: without one, TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" (A100, H100).
"""

import glob
import os
import platform
import shutil
import sys

try:
    import torch
except ImportError:
    sys.exit(
        "bckd: PyTorch is not installed in this environment. Install it first, e.g.\n"
        "    pip install torch==2.14.1 torchvision==0.29.1\n"
        "then build with\n"
        "    pip install -e . --no-build-isolation"
    )

from setuptools import setup  # noqa: E402

DEFAULT_ARCH_LIST = "8.0;9.0"


def find_cuda_home():
    """The CUDA toolkit root: CUDA_HOME / CUDA_PATH, else the folder above a
    real nvcc (a wrapper script on PATH is followed to the toolkit beside it)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(root, "bin", "nvcc")
        ):
            return root
    return None


def cuda_requested():
    flag = os.environ.get("BCKD_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"bckd: BCKD_CUDA must be 0, 1 or unset, got {flag!r}")
    cuda_home = find_cuda_home()
    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME to its root)"
    if flag == "0":
        return False, cuda_home, "disabled by BCKD_CUDA=0"
    if problem is not None:
        if flag == "1":
            sys.exit(f"bckd: BCKD_CUDA=1 but the CUDA kernels cannot be built: {problem}")
        return False, cuda_home, problem
    return True, cuda_home, "enabled"


with_cuda, cuda_home, cuda_reason = cuda_requested()
if with_cuda:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# Translation units compiled with an instruction set of their own, the way
# PyTorch builds its per-capability CPU kernels: flags for that file only,
# never a target pragma over library headers (GCC 13 and clang refuse it).
# ops_cpu.cpp picks the AVX-512 or AVX2 kernels at run time when the processor has them.
ISA_FLAGS = {}
if platform.machine().lower() in ("x86_64", "amd64") and os.name != "nt":
    ISA_FLAGS[os.path.join("csrc", "cpu", "kernels_avx2.cpp")] = ["-mavx2", "-mfma", "-mf16c"]
    ISA_FLAGS[os.path.join("csrc", "cpu", "kernels_avx512.cpp")] = [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]


class BuildWithIsaFlags(BuildExtension):
    """torch's BuildExtension, plus ISA_FLAGS for the files listed there."""

    def build_extension(self, ext):
        compile_all = self.compiler.compile

        def compile_sources(sources, *args, extra_postargs, **kwargs):
            # extra_postargs is ext.extra_compile_args: {"cxx": [...], "nvcc": [...]}.
            def isa(source):
                return ISA_FLAGS.get(os.path.relpath(os.path.abspath(source)))

            plain = [s for s in sources if isa(s) is None]
            objects = compile_all(plain, *args, extra_postargs=extra_postargs, **kwargs) if plain else []
            for source in sources:
                if isa(source) is not None:
                    post = dict(extra_postargs, cxx=extra_postargs["cxx"] + isa(source))
                    objects += compile_all([source], *args, extra_postargs=post, **kwargs)
            return objects

        self.compiler.compile = compile_sources
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_all

cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
cxx_flags = ["-O3", "-fopenmp"]
extra = dict(
    extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
    extra_link_args=["-fopenmp"],
)

print(
    "bckd build: torch {} (CUDA {}), CUDA kernels: {}{}".format(
        torch.__version__,
        torch.version.cuda,
        cuda_reason,
        f" [CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'detected')}]"
        if with_cuda
        else "",
    ),
    flush=True,
)

if with_cuda:
    ext = CUDAExtension("bckd_kernels._C", cpp_sources + cuda_sources, **extra)
else:
    extra["extra_compile_args"] = {"cxx": cxx_flags}
    ext = CppExtension("bckd_kernels._C", cpp_sources, **extra)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildWithIsaFlags.with_options(use_ninja=True)},
)
