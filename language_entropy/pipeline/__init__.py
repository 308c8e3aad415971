"""Orchestration: everything that knows about MLflow, devices, signals, locks, resume and staged outputs.

The components in the package root (model, generation, losses, measure, theory, evaluation, plots,
report) take small configs and plain data; some read or write the files they are given (data splits,
checkpoints, figures), but none imports this package, MLflow or torch.distributed's launch code
(tests/test_structure.py walks the package to hold that). Here: one module per stage (`train`,
`evaluate`, `visualize`), each reading top to bottom as the story of its stage, and the pieces they
share (`cli`, `devices`, `tracking`, `runs`, `guards`, `outputs`, `deps`). `stages/*.py` parse the
command line and call these.
"""
