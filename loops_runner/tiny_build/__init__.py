"""The build of the built-in ``tiny`` model, apart from the model registry.

It needs the task registry and the data layer (the pretraining corpus), so it
sits above them; :mod:`loops_runner.models` keeps the registry and the
installation of the shipped copy and never imports this package.
"""
