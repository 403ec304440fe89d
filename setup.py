"""The package layout pyproject.toml cannot say: the built-in studies of the top-level analyses/ folder ship inside
the package, as loafing/analyses/*.toml (package data), so that a non-editable install finds them too."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["loafing", "loafing.*"]), "loafing.analyses"],
      package_dir={"loafing.analyses": "analyses"}, package_data={"loafing.analyses": ["*.toml"]})
