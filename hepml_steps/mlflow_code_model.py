"""The code MLflow runs to build a logged hepml model (MLflow 3 "models from code").

MLflow copies this file into every model :mod:`hepml_steps.mlflow_model` logs
and executes it on ``mlflow.pyfunc.load_model``; the model's ``code/`` folder
(this package) is on ``sys.path`` then. Not imported by hepml itself.
"""
import mlflow

from hepml_steps.mlflow_model import HepmlModel

mlflow.models.set_model(HepmlModel())
