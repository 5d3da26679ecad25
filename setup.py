"""Tismet: a storage engine for Graphite (carbon + graphite-web).

The C engine in native/ is compiled by cffi (API mode) into tismet._native;
tismet._convert is a small CPython extension that turns engine output into
Python lists in one pass.
"""
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "tismet", "_version.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no version")


# The Graphite parts Tismet plugs into, pinned to the versions it is tested with.
_WHISPER = ["whisper==1.1.10"]
_CARBON = ["carbon==1.1.10"] + _WHISPER
_GRAPHITE = ["graphite-web==1.1.10"]

_san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if os.environ.get("TISMET_SANITIZE") else []

setup(
    name="tismet",
    version=_version(),
    description="A crash-safe, compact storage engine for Graphite",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=["tismet", "tismet_carbon", "tismet_finder"],
    # the carbon dropin lives in Twisted's shared plugin namespace package,
    # which must not get an __init__.py of ours
    py_modules=["twisted.plugins.tismet_carbon_plugin"],
    package_data={"tismet": ["API.md"]},
    python_requires=">=3.8",
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15"],
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    entry_points={"console_scripts": ["tismet = tismet.cli:main"]},
    ext_modules=[
        Extension(
            "tismet._convert",
            sources=["tismet/_convert.c"],
            include_dirs=["native"],
            depends=["native/tismet.h"],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"] + _san,
            extra_link_args=_san,
        )
    ],
    extras_require={
        "whisper": _WHISPER,
        "carbon": _CARBON,
        "graphite": _GRAPHITE,
        "demo": _CARBON + _GRAPHITE + ["gunicorn"],
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout", "gunicorn", "pillow"]
        + _WHISPER + _CARBON + _GRAPHITE,
    },
    zip_safe=False,
)
