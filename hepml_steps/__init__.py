"""hepml: the step functions behind the Snakemake workflow.

Each stage of the workflow (``rules/<stage>.smk``) has a module here of the
same name holding a plain function over files and a thin CLI. Importing this
package is cheap: heavy libraries (xgboost, torch, mlflow) are imported only
inside the functions that need them.
"""

import os as _os

# Number CUDA devices in PCI bus order, as NVML does, so the GPU a step trains
# on is the GPU its energy is read from (CUDA's default is "fastest first").
# Must be set before CUDA initialises; a value the user exported is kept.
_os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

__version__ = "0.1.0"
