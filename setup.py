"""Build of the C core (src_c/) behind the Cython bridge (bitttt/_core.pyx)."""
import os
import sys
from glob import glob

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - Cython is a build requirement
    sys.exit("building bitttt needs Cython: pip install cython")

here = os.path.dirname(os.path.abspath(__file__))
c_sources = sorted(os.path.relpath(p, here) for p in glob(os.path.join(here, "src_c", "*.c")))

compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-function",
                "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
link_args = ["-fopenmp"]
if os.environ.get("BITTTT_NO_OPENMP"):
    compile_args.remove("-fopenmp")
    link_args = []

ext = Extension(
    "bitttt._core",
    sources=["bitttt/_core.pyx"] + c_sources,
    include_dirs=["src_c"],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[("_POSIX_C_SOURCE", "200809L"), ("_ISOC11_SOURCE", "1")],
)

setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}))
