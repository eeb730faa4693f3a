"""compress: distill, prune, fine-tune, quantize, export and benchmark a model for the edge from one recipe.

    >>> from compress import load_recipe, run
    >>> report = run(load_recipe("recipes/digits.yaml"))  # doctest: +SKIP
    >>> report = run("recipes/tiny-lm.yaml", output="/tmp/out")  # a path works too; task: lm runs the LM pipeline  # doctest: +SKIP
"""

__version__ = "0.1.0"
__all__ = ["load_recipe", "run", "validate", "__version__"]


def __getattr__(name):  # lazy: `compress --help` must not import torch
    if name == "load_recipe":
        from compress.recipe import load_recipe

        return load_recipe
    if name in ("run", "validate"):
        from compress import _api

        return getattr(_api, name)
    raise AttributeError(name)
