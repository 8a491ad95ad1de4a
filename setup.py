"""Build the optional C extension; everything else is in pyproject.toml.

``collector._otlpcols`` is the columnar OTLP decoder. It is optional: when it cannot be
compiled, the install still succeeds and the OTLP receiver uses the pure-Python path
(and says so once in its log).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector._otlpcols",
            ["collector/_otlpcols.c", "collector/_otlpmap.c"],
            depends=["collector/_otlpcols.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
