# The one version source: pyproject reads it (tool.setuptools.dynamic), the CLI prints it.
__version__ = "0.1.0"
