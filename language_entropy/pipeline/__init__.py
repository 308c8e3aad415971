"""The stages' orchestration: each module runs one stage from params to written, logged outputs.

The components (model, losses, measure, theory, evaluation, plots) know nothing of MLflow, devices,
signals or files on disk; everything that does lives here, one module per stage, each reading top to
bottom as the story of its stage. `stages/*.py` parse the command line and call these.
"""
