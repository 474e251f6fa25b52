"""The code MLflow runs to build a logged hepml model (MLflow 3 "models from code").

MLflow copies this file into every model :mod:`hepml_steps.mlflow_model` logs
and executes it on ``mlflow.pyfunc.load_model``, with the model's ``code/``
folder (the hepml it was logged with) first on ``sys.path``. Python holds one
``hepml_steps``: one already imported, or installed in editable mode, is used
instead of the model's copy. Not imported by hepml itself.
"""

import mlflow

try:
    from hepml_steps.mlflow_model import HepmlModel
except ImportError as exc:  # an older hepml took precedence over the model's own copy
    import hepml_steps

    raise ImportError(
        f"this model needs hepml_steps.mlflow_model, which the hepml at {hepml_steps.__file__} lacks: "
        "load it where that hepml is not importable (the model carries its own copy) or update it"
    ) from exc

mlflow.models.set_model(HepmlModel())
