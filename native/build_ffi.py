"""cffi build script for the engine (API, out-of-line mode).

setup.py names it in ``cffi_modules``; it compiles every ``native/*.c``
into the extension ``tismet._native`` with warnings as errors.  The
declarations given to cffi are the CDEF block of ``native/tismet.h``, so the
header stays the single description of the C interface.

Set ``TISMET_SANITIZE=1`` to build with AddressSanitizer and UBSan (the
``sanitize`` tox environment does this).
"""
import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _cdef():
    with open(os.path.join(HERE, "tismet.h")) as f:
        text = f.read()
    return text.split("/* CDEF-BEGIN */")[1].split("/* CDEF-END */")[0]


def _version():
    with open(os.path.join(HERE, os.pardir, "tismet", "_version.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("tismet/_version.py has no __version__")


def _flags():
    # -flto lets the compiler inline the small accessors of one layer (page.c,
    # db.c) into the hot loops of another (series.c) without moving code
    cflags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden", "-flto=auto"]
    ldflags = ["-pthread", "-flto=auto", "-O2"]
    if os.environ.get("TISMET_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        cflags = [f for f in cflags if f != "-O2"] + ["-O1", "-g"] + san
        ldflags += san
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef(_cdef() + "\nconst char *tismet_build_version(void);\n")
_cflags, _ldflags = _flags()
ffibuilder.set_source(
    "tismet._native",
    '#include "tismet.h"\n'
    'const char *tismet_build_version(void) { return "%s"; }\n' % _version(),
    sources=sorted(os.path.relpath(p) for p in glob.glob(os.path.join(HERE, "*.c"))),
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
