"""The one thing pyproject.toml cannot say: the dispatcher's optional C hot path.

`optional=True`: without a compiler the install goes on and the dispatcher runs the same
logic in Python (clusterui/dispatch/core.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "clusterui.dispatch._handoff",
            ["src/clusterui/dispatch/_handoff.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
