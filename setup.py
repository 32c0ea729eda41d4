"""Only the optional C accelerator; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "monitord.audit._fastparse",
            sources=["monitord/audit/_fastparse.c"],
            # A machine without a compiler or Python headers still installs monitord:
            # the pure-Python parser is the fallback (and the reference).
            optional=True,
        )
    ]
)
