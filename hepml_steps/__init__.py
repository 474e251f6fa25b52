"""hepml: the step functions behind the Snakemake workflow.

Each stage of the workflow (``rules/<stage>.smk``) has a module here of the
same name holding a plain function over files and a thin CLI. Importing this
package is cheap: heavy libraries (xgboost, torch, mlflow) are imported only
inside the functions that need them.
"""
__version__ = "0.1.0"
